"""The model's Triton attention backend: the right kernel for each call and clear errors (the
whole model on backend "triton": test_model_backend.py)."""
from __future__ import annotations

import pytest
import torch

import kernels.launch
from kernels.attention import attention_triton
from kernels.attention_reference import attention_reference
from model.attention import attend
from tests.kernels.guarded import assert_matches, randn


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("masked", [pytest.param(False, id="no-mask,chunk"),
                                    pytest.param(True, id="mask,block-causal")])
def test_attend_with_triton_backend_equals_reference(masked: bool, dtype: torch.dtype,
                                                     device: torch.device) -> None:
    Lq, Lk = 7, 33
    q = randn(1, 4, Lq, 16, dtype=dtype, device=device)
    k, v = (randn(1, 2, Lk, 16, dtype=dtype, device=device) for _ in range(2))
    # The chunk's queries are the cache's last Lq rows: causal among them, all earlier visible.
    mask = (torch.arange(Lk)[None, :] <= torch.arange(Lk - Lq, Lk)[:, None]).to(device) if masked else None
    assert_matches(attend(q, k, v, mask, backend="triton"), attention_reference(q, k, v, mask),
                   dtype, "attend(backend='triton')")


def test_mask_of_the_wrong_shape_or_dtype_is_a_clear_error(device: torch.device) -> None:
    q = randn(1, 2, 5, 16, dtype=torch.float32, device=device)
    k = randn(1, 2, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"attention_triton: mask must be a bool \(Lq, Lk\) = \(5, 9\)"):
        attention_triton(q, k, k, torch.ones(9, 5, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="found torch.float32"):
        attention_triton(q, k, k, torch.ones(5, 9, device=device))


def test_shape_and_device_errors_say_what_was_found(device: torch.device,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    q = randn(1, 2, 5, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, L, d\), found shape \(2, 5, 16\)"):
        attention_triton(q[0], q, q)
    with pytest.raises(ValueError, match=r"must agree on batch"):
        attention_triton(q, q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1))
    monkeypatch.setattr(kernels.launch, "INTERPRET", False)  # as on a machine with a GPU
    cpu = q.cpu()
    with pytest.raises(RuntimeError, match="need a CUDA device.*TRITON_INTERPRET=1"):
        attention_triton(cpu, cpu, cpu)
