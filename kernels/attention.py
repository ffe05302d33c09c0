"""The Triton attention entry point of model/attention.py: one call, two kernels.

`attention_triton(q, k, v, mask)` has the signature of `attention_reference`: with no mask it
is the serving path (a chunk against the KV cache, split over the keys:
kernels/chunk_attention.py); with a mask it is prefill or training (flash attention that
skips the mask's empty tiles: kernels/block_causal_attention.py). Inputs are checked here,
with errors that name the fix, before either kernel is chosen; this file holds no kernel.
"""
from __future__ import annotations

import torch
from torch import Tensor

from kernels.block_causal_attention import block_causal_attention
from kernels.chunk_attention import chunk_attention
from kernels.launch import check_attention_inputs, check_device


def attention_triton(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """q (B, Hq, Lq, d); k, v (B, Hkv, Lk, d), Hq a multiple of Hkv; mask (Lq, Lk) bool, True
    where a query may attend, or None when every key is visible. Returns (B, Hq, Lq, d) in
    q's dtype. Runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1."""
    where = "attention_triton"
    _, _, _, Lq, Lk, _ = check_attention_inputs(where, q, k, v)
    if mask is None:
        return chunk_attention(q, k, v)
    if mask.dtype != torch.bool or tuple(mask.shape) != (Lq, Lk):
        raise ValueError(f"{where}: mask must be a bool (Lq, Lk) = ({Lq}, {Lk}) tensor, True where a "
                         f"query may attend; found {mask.dtype} {tuple(mask.shape)}")
    check_device(where, q=q, mask=mask)
    return block_causal_attention(q, k, v, mask)
