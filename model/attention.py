"""The one attention function of the model, with a backend switch.

Both paths call it: training passes the block-causal mask; serving passes no mask (the chunk
attends to the valid prefix of the KV cache, which already holds the chunk itself).
Backends: "reference" (plain PyTorch), "sdpa" (torch scaled_dot_product_attention),
"triton" (kernels/, GPU or TRITON_INTERPRET=1).
"""
from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kernels.attention_reference import attention_reference

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
