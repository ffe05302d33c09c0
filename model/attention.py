"""The model's backend switch: attention, and the two ops around it that have Triton kernels
(RoPE on q/k, the fused RMSNorm + adaLN modulation).

Both paths call `attend`: training passes the block-causal mask; serving passes no mask (the
chunk attends to the valid prefix of the KV cache, which already holds the chunk itself).
Backends: "reference" (plain PyTorch), "sdpa" (torch scaled_dot_product_attention; RoPE and
the norm stay plain PyTorch), "triton" (all three from kernels/, on a GPU or under
TRITON_INTERPRET=1; inference only: the kernels have no backward).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.attention_reference import attention_reference
from kernels.norm_modulate import norm_modulate_reference, norm_modulate_triton
from kernels.rope import rope_reference, rope_triton_

Backend = Literal["reference", "sdpa", "triton"]
BACKENDS: tuple[str, ...] = ("reference", "sdpa", "triton")


@dataclass(frozen=True)
class SparseMask:
    """A whole sequence's (L, L) mask kept, for each block of `block` query rows, as the keys
    any of them may see. Training's sequence is long and the window hides most of it from each
    unit, but SDPA on a CPU computes every key a dense mask hides: here each block of queries
    attends to its own gathered keys (about a quarter of them at the `demo` preset's 32 units)."""
    dense: Tensor  # (L, L) bool, True where query i may attend key j (the reference backend's)
    keys: Tensor  # (blocks, K) int64: block b's keys, those it sees first (K: the most any block sees)
    keep: Tensor  # (blocks, block, K) bool: which of them each query row sees

    @staticmethod
    def of(mask: Tensor, block: int) -> "SparseMask":
        L = mask.shape[0]
        n = -(-L // block)
        rows = torch.cat([mask, mask[-1:].expand(n * block - L, L)])  # padding rows: the last row's keys
        blocks = rows.view(n, block, L)
        seen = blocks.any(1)  # (n, L)
        K = int(seen.sum(1).max())
        keys = torch.sort(seen.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :K]
        return SparseMask(mask, keys, torch.gather(blocks, 2, keys[:, None].expand(n, block, K)))


def attend_sparse(q: Tensor, k: Tensor, v: Tensor, mask: SparseMask) -> Tensor:
    """`attend` under a SparseMask: one SDPA over every block of queries and its gathered keys.
    q (B, Hq, L, d); k, v (B, Hkv, L, d) -> (B, Hq, L, d)."""
    B, Hq, L, d = q.shape
    Hkv = k.shape[1]
    n, K = mask.keys.shape
    block = mask.keep.shape[1]
    qb = F.pad(q, (0, 0, 0, n * block - L)).view(B, Hq, n, block, d).transpose(1, 2).reshape(B * n, Hq, block, d)
    kb, vb = (x[:, :, mask.keys].transpose(1, 2).reshape(B * n, Hkv, K, d) for x in (k, v))
    keep = mask.keep[None].expand(B, n, block, K).reshape(B * n, 1, block, K)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=keep, enable_gqa=Hq != Hkv)
    return o.view(B, n, Hq, block, d).transpose(1, 2).reshape(B, Hq, n * block, d)[:, :, :L]


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | SparseMask | None, backend: Backend) -> Tensor:
    """q (B, Hq, Lq, d); k, v (B, Hkv, Lk, d); mask (Lq, Lk) bool, or a SparseMask of one, or
    (B, 1, 1, Lk) (the keys each batch row's session wrote: a batch whose slots joined apart),
    or None -> (B, Hq, Lq, d). The Triton kernels take no per-row key mask: such a batch runs
    through SDPA. A SparseMask runs through attend_sparse (the reference backend: its dense mask)."""
    if isinstance(mask, SparseMask):
        return attention_reference(q, k, v, mask.dense) if backend == "reference" else attend_sparse(q, k, v, mask)
    if backend == "reference":
        return attention_reference(q, k, v, mask)
    if backend == "sdpa" or (backend == "triton" and mask is not None and mask.dim() == 4):
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if backend == "triton":
        from kernels.attention import attention_triton  # imported on use: needs a GPU or the interpreter
        return attention_triton(q, k, v, mask)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")


def attend_beside(q: Tensor, ck: Tensor, cv: Tensor, k: Tensor, v: Tensor, stale: Tensor) -> Tensor:
    """Attention of a chunk to the KV cache and to its own k, v held beside it, not written
    in: equal, to float rounding, to `attend` on the cache with k, v written at the rows
    marked `stale`. q (B, Hq, L, d); ck, cv (B, Hkv, N, d) the cache; k, v (B, Hkv, L, d);
    stale (N,) or (B, N) bool, True at the rows left out here: those the chunk's k, v will
    overwrite (and, per batch row, those its session did not write). Plain
    PyTorch whatever the backend, one softmax over both parts (a chunk of L > 1 rows with no
    earlier rows beside: SDPA on the cache and k, v concatenated, stale rows masked; else
    batched matmuls around one shared maximum): the compiled path's attention
    (model/compiled.py), which must not write into the cache inside a graph (the compiler
    would copy the whole cache to do so)."""
    B, Hq, L, d = q.shape
    Hkv = k.shape[1]
    if L > 1 and k.shape[2] == L:  # a chunk (no earlier rows beside): one SDPA over cache + chunk
        # (measured ~1.07x on the chunk and resp graphs against the 4 matmuls below; the text
        # slots, 1 query row beside their earlier slots, keep the matmuls)
        own = torch.ones(*stale.shape[:-1], L, dtype=torch.bool, device=stale.device)
        keep = torch.cat([~stale, own], -1)
        keep = keep.view(-1, 1, 1, keep.shape[-1])  # (1 or B, 1, 1, N + L)
        return F.scaled_dot_product_attention(q, torch.cat([ck, k], 2), torch.cat([cv, v], 2),
                                              attn_mask=keep, enable_gqa=Hq != Hkv)
    qg = q.reshape(B, Hkv, (Hq // Hkv) * L, d) * d ** -0.5  # query heads grouped by their kv head
    s_cache = (qg @ ck.transpose(-1, -2)).masked_fill(stale.view(-1, 1, 1, stale.shape[-1]), float("-inf"))  # (B, Hkv, G L, N)
    s_own = qg @ k.transpose(-1, -2)  # (B, Hkv, G L, L)
    top = torch.maximum(s_cache.amax(-1, keepdim=True), s_own.amax(-1, keepdim=True))
    p_cache, p_own = (s_cache - top).exp(), (s_own - top).exp()
    o = (p_cache @ cv + p_own @ v) / (p_cache.sum(-1, keepdim=True) + p_own.sum(-1, keepdim=True))
    return o.view(B, Hq, L, d)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, backend: Backend) -> Tensor:
    """RoPE on q or k (B, H, L, d) by the angle table cos, sin (L, d/2) fp32. The Triton kernel
    rotates x in place: callers pass a tensor of their own (a fresh projection)."""
    if backend == "triton":
        return rope_triton_(x, cos, sin)
    return rope_reference(x, cos, sin)


def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, eps: float, backend: Backend) -> Tensor:
    """RMSNorm without weight, then adaLN: x / rms(x) * (1 + scale) + shift; x (B, L, D), shift
    and scale (B, L, D) or (B, 1, D) (one modulation for the whole chunk)."""
    shift, scale = shift.expand_as(x), scale.expand_as(x)
    if backend == "triton":
        return norm_modulate_triton(x, shift, scale, eps)
    return norm_modulate_reference(x, shift, scale, eps)
