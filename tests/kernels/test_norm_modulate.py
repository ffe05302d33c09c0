"""Fused RMSNorm + adaLN modulation equals the reference, on the model's strided shift/scale.

Interpreter (CPU): fp32 and fp16; GPU: bf16 too (TOLERANCE in tests/kernels/guarded.py)."""
from __future__ import annotations

import pytest
import torch

from kernels.norm_modulate import norm_modulate_reference, norm_modulate_triton
from tests.kernels.guarded import assert_matches, guarded_copy, nan_guarded, randn

EPS = 1e-6
GEOMETRIES = [  # (B, L, D)
    pytest.param(1, 7, 64, id="L=7,D=64"),
    pytest.param(2, 33, 48, id="B=2,L=33,D=48"),
    pytest.param(1, 1, 1000, id="L=1,D=1000"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, L, D", GEOMETRIES)
def test_norm_modulate_equals_reference_and_stays_in_bounds(
        B: int, L: int, D: int, dtype: torch.dtype, device: torch.device) -> None:
    x, shift, scale = (guarded_copy(randn(B, L, D, dtype=dtype, device=device) * s) for s in (3.0, 1.0, 0.5))
    out = nan_guarded((B, L, D), dtype, device)
    got = norm_modulate_triton(x.view, shift.view, scale.view, EPS, out=out.view)
    assert_matches(got, norm_modulate_reference(x.view, shift.view, scale.view, EPS), dtype, "norm_modulate")
    assert out.outside_is_nan(), "norm_modulate wrote outside its output"


def test_shift_and_scale_as_slices_of_the_modulation_tensor(device: torch.device) -> None:
    """As in the model: (B, L, 6, D) modulation unbound along dim 2, and a per-sequence
    modulation expanded over L (stride 0)."""
    B, L, D = 2, 5, 64
    x = randn(B, L, D, dtype=torch.float32, device=device)
    shift, scale = randn(B, L, 6, D, dtype=torch.float32, device=device).unbind(2)[:2]
    assert_matches(norm_modulate_triton(x, shift, scale, EPS), norm_modulate_reference(x, shift, scale, EPS),
                   torch.float32, "unbound slices")
    shift1 = randn(B, 1, D, dtype=torch.float32, device=device).expand(B, L, D)
    assert_matches(norm_modulate_triton(x, shift1, scale, EPS), norm_modulate_reference(x, shift1, scale, EPS),
                   torch.float32, "expanded shift")


def test_norm_modulate_errors_say_how_to_fix(device: torch.device) -> None:
    x = randn(1, 3, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"shift must have x's shape \(1, 3, 16\).*expand_as"):
        norm_modulate_triton(x, x[:, :1], x, EPS)
    with pytest.raises(ValueError, match="must be \\(B, L, D\\)"):
        norm_modulate_triton(x[0], x[0], x[0], EPS)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_norm_modulate_on_cuda_equals_reference(dtype: torch.dtype) -> None:
    dev = torch.device("cuda")
    x, shift, scale = (randn(1, 300, 5120, dtype=dtype, device=dev) for _ in range(3))  # large: D 5120
    assert_matches(norm_modulate_triton(x, shift, scale, EPS), norm_modulate_reference(x, shift, scale, EPS),
                   dtype, "norm_modulate on cuda")
