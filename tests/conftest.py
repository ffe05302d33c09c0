"""Root fixtures and process-wide test settings, loaded before any test module is imported."""
from __future__ import annotations

import os

import pytest
import torch

# --- kernels: Triton's interpreter on machines without CUDA --------------------------------
# Triton decides interpreter-or-compiler when a kernel is decorated, i.e. when kernels/ is
# first imported, and model/ imports kernels/ (the references sit beside the kernels). So the
# switch is set here, before any test module (tests/model included) is collected. On a CUDA
# machine the kernels compile for the device and the same tests run there.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# --- end kernels ---------------------------------------------------------------------------


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu`, each by name, where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
