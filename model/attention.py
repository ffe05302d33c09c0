"""The model's backend switch: attention, and the two ops around it that have Triton kernels
(RoPE on q/k, the fused RMSNorm + adaLN modulation).

Both paths call `attend`: training passes the block-causal mask; serving passes no mask (the
chunk attends to the valid prefix of the KV cache, which already holds the chunk itself).
Backends: "reference" (plain PyTorch), "sdpa" (torch scaled_dot_product_attention; RoPE and
the norm stay plain PyTorch), "triton" (all three from kernels/, on a GPU or under
TRITON_INTERPRET=1; inference only: the kernels have no backward).
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kernels.attention_reference import attention_reference
from kernels.norm_modulate import norm_modulate_reference, norm_modulate_triton
from kernels.rope import rope_reference, rope_triton_

Backend = Literal["reference", "sdpa", "triton"]
BACKENDS: tuple[str, ...] = ("reference", "sdpa", "triton")


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, backend: Backend) -> Tensor:
    """q (B, Hq, Lq, d); k, v (B, Hkv, Lk, d); mask (Lq, Lk) bool or None -> (B, Hq, Lq, d)."""
    if backend == "reference":
        return attention_reference(q, k, v, mask)
    if backend == "sdpa":
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if backend == "triton":
        from kernels.attention import attention_triton  # imported on use: needs a GPU or the interpreter
        return attention_triton(q, k, v, mask)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def rotate(x: Tensor, cos: Tensor, sin: Tensor, backend: Backend) -> Tensor:
    """RoPE on q or k (B, H, L, d) by the angle table cos, sin (L, d/2) fp32. The Triton kernel
    rotates x in place: callers pass a tensor of their own (a fresh projection)."""
    if backend == "triton":
        return rope_triton_(x, cos, sin)
    return rope_reference(x, cos, sin)


def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float, backend: Backend) -> Tensor:
    """RMSNorm without weight, then adaLN: x / rms(x) * (1 + scale) + shift; all (B, L, D)."""
    if backend == "triton":
        return norm_modulate_triton(x, shift, scale, eps)
    return norm_modulate_reference(x, shift, scale, eps)
