"""In-place RoPE equals the reference rotation, on the strided q/k views the model makes.

Interpreter (CPU): fp32 and fp16; GPU: bf16 too. The kernel rotates in fp32 and rounds once,
as the reference does, so fp32/fp16 results are equal up to one rounding (TOLERANCE)."""
from __future__ import annotations

import pytest
import torch

from kernels.rope import rope_reference, rope_triton_
from tests.kernels.guarded import assert_matches, guarded_copy, randn

GEOMETRIES = [  # (B, H, L, d, per-batch angles)
    pytest.param(1, 4, 7, 16, False, id="L=7,d=16,angles=(L,d/2)"),
    pytest.param(2, 3, 33, 32, True, id="B=2,L=33,d=32,angles=(B,L,d/2)"),
    pytest.param(1, 2, 1, 24, False, id="L=1,d=24"),
    pytest.param(2, 1, 131, 16, False, id="B=2,L=131,d=16"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


def angles(B: int, L: int, d: int, per_batch: bool, device: torch.device) -> tuple[torch.Tensor, ...]:
    shape = (B, L, d // 2) if per_batch else (L, d // 2)
    a = torch.rand(shape) * 50.0
    return a.cos().to(device), a.sin().to(device)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, L, d, per_batch", GEOMETRIES)
def test_rope_in_place_equals_reference_and_touches_only_x(
        B: int, H: int, L: int, d: int, per_batch: bool, dtype: torch.dtype, device: torch.device) -> None:
    x = guarded_copy(randn(B, H, L, d, dtype=dtype, device=device))
    cos, sin = angles(B, L, d, per_batch, device)
    want = rope_reference(x.view, cos, sin)
    got = rope_triton_(x.view, cos, sin)
    assert got.data_ptr() == x.view.data_ptr()
    assert_matches(x.view, want, dtype, "rope")
    assert x.outside_is_nan(), "rope wrote outside x"


def test_rope_rotates_the_transposed_projection_the_model_makes(device: torch.device) -> None:
    """q as the model has it: (B, L, H, d) from the projection, transposed to (B, H, L, d)."""
    B, L, H, d = 2, 9, 4, 16
    q = randn(B, L, H, d, dtype=torch.float32, device=device).transpose(1, 2)
    cos, sin = angles(B, L, d, False, device)
    want = rope_reference(q, cos, sin)
    rope_triton_(q, cos, sin)
    assert_matches(q, want, torch.float32, "transposed q")


def test_rope_errors_name_the_expected_shapes(device: torch.device) -> None:
    x = randn(1, 2, 5, 16, dtype=torch.float32, device=device)
    cos, sin = angles(1, 5, 16, False, device)
    with pytest.raises(ValueError, match=r"cos must be \(L, d/2\) = \(5, 8\) or \(B, L, d/2\)"):
        rope_triton_(x, cos[:4], sin)
    with pytest.raises(TypeError, match="must be fp32"):
        rope_triton_(x, cos.half(), sin)
    with pytest.raises(ValueError, match="overlaps itself"):
        rope_triton_(x[:, :1].expand(1, 2, 5, 16), cos, sin)
    with pytest.raises(ValueError, match="d even"):
        rope_triton_(x[..., :15], cos, sin)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_rope_in_place_on_cuda_equals_reference(dtype: torch.dtype) -> None:
    dev = torch.device("cuda")
    q = randn(1, 300, 16, 128, dtype=dtype, device=dev).transpose(1, 2)  # base: 16 heads, d 128
    cos, sin = angles(1, 300, 128, False, dev)
    want = rope_reference(q, cos, sin)
    ptr = q.data_ptr()
    rope_triton_(q, cos, sin)
    assert q.data_ptr() == ptr
    assert_matches(q, want, dtype, "rope on cuda")
