"""Fixtures of the kernel tests: the device the kernels run on here.

Without CUDA the kernels run under Triton's interpreter on CPU; tests/conftest.py sets
TRITON_INTERPRET=1 before kernels/ is imported (and skips the tests marked `gpu`); everything
else runs on both.
"""
from __future__ import annotations

import os

import pytest
import torch

import kernels.launch


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
