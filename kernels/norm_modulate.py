"""RMSNorm fused with adaLN modulation: the PyTorch reference (the Triton kernel sits beside it).

y = x / rms(x) * (1 + scale) + shift, per token; there is no learned norm weight (the
modulation carries the scale).
"""
from __future__ import annotations

import torch
from torch import Tensor


def norm_modulate_reference(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> Tensor:
    """x, shift, scale (B, L, D) -> (B, L, D) in x.dtype; statistics in fp32."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * (1 + scale.float()) + shift.float()).to(x.dtype)
