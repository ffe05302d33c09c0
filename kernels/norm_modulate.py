"""RMSNorm fused with adaLN modulation: the PyTorch reference and the Triton kernel.

y = x / rms(x) * (1 + scale) + shift, per token; there is no learned norm weight (the
modulation carries the scale). Statistics and arithmetic in fp32, one rounding to x's dtype.
The kernel reads x, shift and scale once and writes y once: one pass instead of the five
elementwise kernels (and their intermediates) of the eager reference. Nothing here knows
where shift and scale come from (the model's timestep modulation).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.launch import check_device, check_float, check_out, check_rows_contiguous

MAX_BLOCK_D = 16384  # a token's channels must fit one program's registers


def norm_modulate_reference(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """x, shift, scale (B, L, D) -> (B, L, D) in x.dtype; statistics in fp32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1 + scale.float()) + shift.float()).to(x.dtype)


@triton.jit
def _norm_modulate_kernel(X, SHIFT, SCALE, Y,
                          stride_xb, stride_xl, stride_hb, stride_hl,
                          stride_sb, stride_sl, stride_yb, stride_yl,
                          L, D, eps,
                          BLOCK_D: tl.constexpr):
    """Grid (B * L,): one token a program, all D channels in one tile."""
    tl.static_assert(BLOCK_D <= 16384, "a token's channels must fit one program (MAX_BLOCK_D)")
    row = tl.program_id(0)
    b = (row // L).to(tl.int64)
    pos = row % L
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    x = tl.load(X + b * stride_xb + pos * stride_xl + offs, mask=ok, other=0.0).to(tl.float32)
    shift = tl.load(SHIFT + b * stride_hb + pos * stride_hl + offs, mask=ok, other=0.0).to(tl.float32)
    scale = tl.load(SCALE + b * stride_sb + pos * stride_sl + offs, mask=ok, other=0.0).to(tl.float32)
    r = tl.math.rsqrt(tl.sum(x * x, 0) / D + eps)
    y = x * r * (1.0 + scale) + shift
    tl.store(Y + b * stride_yb + pos * stride_yl + offs, y.to(Y.dtype.element_ty), mask=ok)


def norm_modulate_triton(x: Tensor, shift: Tensor, scale: Tensor, eps: float,
                         out: Tensor | None = None) -> Tensor:
    """x, shift, scale (B, L, D) -> (B, L, D) in x.dtype, as `norm_modulate_reference`.

    shift and scale may have any dtype of the three and any strides with stride 1 in the last
    dimension (slices of the model's modulation tensor, or expanded over L); out: an optional
    (B, L, D) buffer of x's dtype."""
    where = "norm_modulate_triton"
    if x.dim() != 3:
        raise ValueError(f"{where}: x must be (B, L, D), found {tuple(x.shape)}")
    for name, t in (("shift", shift), ("scale", scale)):
        if t.shape != x.shape:
            raise ValueError(f"{where}: {name} must have x's shape {tuple(x.shape)}, found "
                             f"{tuple(t.shape)}; expand a per-sequence modulation with "
                             f"{name}.expand_as(x)")
    B, L, D = x.shape
    check_device(where, x=x, shift=shift, scale=scale)
    check_float(where, x=x)
    check_float(where, shift=shift)
    check_float(where, scale=scale)
    check_rows_contiguous(where, x=x, shift=shift, scale=scale)
    block_d = triton.next_power_of_2(D)
    if block_d > MAX_BLOCK_D:
        raise ValueError(f"{where}: D = {D} channels exceed one program's tile ({MAX_BLOCK_D})")
    out = check_out(where, out, x.shape, x) if out is not None else torch.empty_like(x)
    if x.numel() == 0:
        return out
    _norm_modulate_kernel[(B * L,)](
        x, shift, scale, out, *x.stride()[:2], *shift.stride()[:2], *scale.stride()[:2],
        *out.stride()[:2], L, D, eps, BLOCK_D=block_d,
        num_warps=min(max(block_d // 256, 1), 16))
    return out
