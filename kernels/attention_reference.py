"""Attention written out in plain PyTorch: the slow twin every fast attention path is tested against.

Shapes: q (B, Hq, Lq, d), k and v (B, Hkv, Lk, d) with Hq a multiple of Hkv (GQA). mask is a
bool (Lq, Lk) tensor, True where a query may attend, or None when every key is visible (the
serving path: a chunk against the cache plus itself).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v in fp32, returned in q's dtype. A query row whose keys are all
    masked comes out NaN here (the Triton kernels return 0 for it; the model makes no such row)."""
    B, Hq, Lq, d = q.shape
    Hkv = k.shape[1]
    if Hq != Hkv:
        k = k.repeat_interleave(Hq // Hkv, dim=1)
        v = v.repeat_interleave(Hq // Hkv, dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) / math.sqrt(d)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", probs, v.float()).to(q.dtype)
