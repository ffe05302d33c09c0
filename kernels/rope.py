"""Rotary position embedding on q/k: the PyTorch reference (the Triton kernel sits beside it).

Convention ("rotate half"): channel i pairs with channel i + d/2 and turns by angle[l, i].
The angle table is built by the model (three axes: time, row, column); this file only rotates.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, L, d); cos, sin (L, d/2) or (B, L, d/2) in fp32. Returns a rotated copy in x.dtype."""
    d2 = x.shape[-1] // 2
    if cos.dim() == 3:  # (B, L, d/2) -> (B, 1, L, d/2)
        cos, sin = cos[:, None], sin[:, None]
    x1, x2 = x[..., :d2].float(), x[..., d2:].float()
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.to(x.dtype)
