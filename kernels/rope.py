"""Rotary position embedding on q/k: the PyTorch reference and the in-place Triton kernel.

Convention ("rotate half"): channel i pairs with channel i + d/2 and turns by angle[l, i]:
    out[i] = x[i] cos - x[i + d/2] sin,   out[i + d/2] = x[i + d/2] cos + x[i] sin.
The angle table (cos, sin) is built by the model (three axes: time, row, column) in fp32;
this file only rotates, with the arithmetic in fp32 and one rounding to x's dtype at the end.
`rope_triton_` rotates x in place (no copy of q or k); the reference returns a new tensor.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.launch import check_device, check_float, check_rows_contiguous

ELEMENTS_PER_PROGRAM = 4096  # (positions x channel pairs) a program rotates


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, L, d); cos, sin (L, d/2) or (B, L, d/2) in fp32. Returns a rotated copy in x.dtype."""
    d2 = x.shape[-1] // 2
    if cos.dim() == 3:  # (B, L, d/2) -> (B, 1, L, d/2)
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x[..., :d2].float(), x[..., d2:].float()
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)


@triton.jit
def _rope_kernel(X, COS, SIN,
                 stride_xb, stride_xh, stride_xl,
                 stride_cb, stride_cl, stride_sb, stride_sl,
                 H, L,
                 HALF: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    """Grid (position blocks, B * H): rotates x[b, h, l0:l0 + BLOCK_L, :] in place."""
    tl.static_assert(BLOCK_C >= HALF, "a program holds all channel pairs of a position")
    tl.static_assert(BLOCK_L * BLOCK_C <= 16384, "tile too large for registers")
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = tl.arange(0, BLOCK_C)
    ok = (offs_l < L)[:, None] & (offs_c < HALF)[None, :]
    x1_ptrs = X + b * stride_xb + h * stride_xh + offs_l[:, None] * stride_xl + offs_c[None, :]
    x2_ptrs = x1_ptrs + HALF
    cos = tl.load(COS + b * stride_cb + offs_l[:, None] * stride_cl + offs_c[None, :], mask=ok, other=0.0)
    sin = tl.load(SIN + b * stride_sb + offs_l[:, None] * stride_sl + offs_c[None, :], mask=ok, other=0.0)
    x1 = tl.load(x1_ptrs, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x2_ptrs, mask=ok, other=0.0).to(tl.float32)
    tl.store(x1_ptrs, (x1 * cos - x2 * sin).to(X.dtype.element_ty), mask=ok)
    tl.store(x2_ptrs, (x2 * cos + x1 * sin).to(X.dtype.element_ty), mask=ok)


def _angle_strides(name: str, t: Tensor, B: int, L: int, half: int) -> tuple[int, int]:
    """(batch stride, position stride) of a (L, d/2) or (B, L, d/2) angle table; 0 = shared."""
    if tuple(t.shape) == (L, half):
        return 0, t.stride(0)
    if tuple(t.shape) == (B, L, half):
        return t.stride(0), t.stride(1)
    raise ValueError(f"rope_triton_: {name} must be (L, d/2) = ({L}, {half}) or (B, L, d/2) = "
                     f"({B}, {L}, {half}) to rotate x of shape (B, H, L, d); found {tuple(t.shape)}")


def rope_triton_(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates x (B, H, L, d) in place by cos, sin ((L, d/2) or (B, L, d/2), fp32); returns x.

    x may be any strided view with stride 1 in its last dimension (q or k straight from the
    projection, transposed); it must not overlap itself (an expanded tensor)."""
    where = "rope_triton_"
    if x.dim() != 4 or x.shape[-1] % 2:
        raise ValueError(f"{where}: x must be (B, H, L, d) with d even, found {tuple(x.shape)}")
    B, H, L, d = x.shape
    half = d // 2
    for dim in range(3):
        if x.stride(dim) == 0 and x.shape[dim] > 1:
            raise ValueError(f"{where}: x overlaps itself (stride 0 in dim {dim}, strides "
                             f"{tuple(x.stride())}); rotate a copy: x.contiguous()")
    check_device(where, x=x, cos=cos, sin=sin)
    check_float(where, x=x)
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise TypeError(f"{where}: cos and sin must be fp32 (the angle table), found {cos.dtype}, {sin.dtype}")
    check_rows_contiguous(where, x=x, cos=cos, sin=sin)
    cos_strides = _angle_strides("cos", cos, B, L, half)
    sin_strides = _angle_strides("sin", sin, B, L, half)
    if x.numel() == 0:
        return x
    block_c = triton.next_power_of_2(half)
    block_l = max(1, min(triton.next_power_of_2(L), ELEMENTS_PER_PROGRAM // block_c))
    grid = (triton.cdiv(L, block_l), B * H)
    _rope_kernel[grid](x, cos, sin, *x.stride()[:3], *cos_strides, *sin_strides, H, L,
                       HALF=half, BLOCK_L=block_l, BLOCK_C=block_c, num_warps=4)
    return x
