"""Fixtures of the kernel tests: the device the kernels run on here, and the GPU marker.

Without CUDA the kernels run under Triton's interpreter on CPU; tests/conftest.py sets
TRITON_INTERPRET=1 before kernels/ is imported. Tests marked `gpu` need a CUDA device and are
skipped, each by name, only where there is none; everything else runs on both.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import kernels.launch


HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this folder's `gpu` tests, by name, where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels run: the GPU when there is one, else CPU under the interpreter."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    assert kernels.launch.INTERPRET, (
        f"no CUDA device and kernels/ was imported without TRITON_INTERPRET=1 "
        f"(found {os.environ.get('TRITON_INTERPRET')!r}); tests/conftest.py must set it first")
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
