"""Masked attention for prefill and training: flash-attention forward under a dense bool mask.

The mask (Lq, Lk), True where a query may attend, is the truth. Before the launch the host
summarises it per (BLOCK_M, BLOCK_N) tile: SKIP (nothing visible: the tile is never loaded),
FULL (all visible: no mask load), MIXED (the mask tile is loaded and applied). The model's
block-causal mask is mostly SKIP and FULL tiles, so the kernel does the work of a causal
flash attention and reads the mask only along the block edges. The summary depends only on
the mask and the tile sizes: a caller that runs many layers under one mask builds it once
(`tile_mask`) and passes it to every call. The kernel walks every key tile (a compile-time
trip count: the key tiles rounded up to a power of two, see chunk_attention.py for why) and
branches on its class, so a SKIP tile costs one scalar load; loads under that branch are not
software-pipelined, a price paid on the prefill path, not on the per-unit serving path.

Rows whose keys are all masked come out as 0 (never NaN). GQA: kv head = q head // group.
The reference is kernels/attention_reference.py; this file never looks at a KV cache.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.launch import (INTERPRET, autotune_configs, check_attention_inputs, check_device,
                            check_out, dot_precision, upcast_tiles)

LOG2E = 1.4426950408889634
SKIP, FULL, MIXED = 0, 1, 2  # tile classes of the summary
_FULL, _MIXED = tl.constexpr(FULL), tl.constexpr(MIXED)  # the same, as kernels see them

_CONFIGS = autotune_configs(
    gpu=[triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 2), (4, 3), (8, 2), (8, 3))],
    interpret=triton.Config({}))


@dataclass(frozen=True)
class TileMask:
    """A mask and its per-tile summary for one tiling; build with `tile_mask`."""
    mask: Tensor  # (Lq, Lk) uint8 view of the bool mask
    summary: Tensor  # (cdiv(Lq, block_m), key_tiles) int32: SKIP / FULL / MIXED
    block_m: int
    block_n: int

    @property
    def key_tiles(self) -> int:
        """Key tiles the kernel walks: cdiv(Lk, block_n) rounded up to a power of two (SKIP
        padding), so a new sequence length rarely compiles a new kernel variant."""
        return self.summary.shape[1]


def default_blocks(head_dim: int, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N): small tiles under the interpreter (so tests see every tile class);
    on a GPU the fused-attention tutorial's, halved where a tile would not fit in registers
    (head size 256, or fp32, which runs only in tests)."""
    if INTERPRET:
        return 16, 16
    return (128, 64) if head_dim <= 128 and dtype != torch.float32 else (64, 32)


def tile_summary(mask: Tensor, block_m: int, block_n: int) -> Tensor:
    """(Lq, Lk) bool -> (cdiv(Lq, block_m), cdiv(Lk, block_n)) int32 of SKIP / FULL / MIXED.

    Keys past Lk count as masked, so a FULL tile never reaches past the keys and loads K/V
    without bounds checks; query rows past Lq are never stored and count as visible."""
    Lq, Lk = mask.shape
    tm, tn = triton.cdiv(Lq, block_m), triton.cdiv(Lk, block_n)
    seen = torch.zeros(tm * block_m, tn * block_n, dtype=torch.bool, device=mask.device)
    seen[:Lq, :Lk] = mask
    whole = seen.clone()
    whole[Lq:, :Lk] = True
    any_ = seen.view(tm, block_m, tn, block_n).any(dim=3).any(dim=1)
    all_ = whole.view(tm, block_m, tn, block_n).all(dim=3).all(dim=1)
    return torch.where(all_, FULL, torch.where(any_, MIXED, SKIP)).to(torch.int32)


def tile_mask(mask: Tensor, block_m: int, block_n: int) -> TileMask:
    """Checks the mask and summarises it for (block_m, block_n) tiles."""
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"tile_mask: mask must be a 2-D bool (Lq, Lk) tensor, True where a query "
                         f"may attend; found {mask.dtype} of shape {tuple(mask.shape)}")
    for name, block in (("block_m", block_m), ("block_n", block_n)):
        if block < 16 or block & (block - 1):
            raise ValueError(f"tile_mask: {name} must be a power of two >= 16, found {block}")
    summary = tile_summary(mask, block_m, block_n)
    tn = summary.shape[1]
    padded = torch.full((summary.shape[0], triton.next_power_of_2(tn)), SKIP, dtype=torch.int32,
                        device=mask.device)
    padded[:, :tn] = summary
    return TileMask(mask.view(torch.uint8), padded, block_m, block_n)


@triton.jit
def _masked_tile(acc, m_i, l_i, q, k_base, v_base, mask_base, offs_m, stride_kn, stride_vn,
                 stride_mm, stride_mn, start, Lq, Lk, qk_scale,
                 BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, APPLY_MASK: tl.constexpr,
                 UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """One key tile of the online softmax. APPLY_MASK: a MIXED tile (bounds-checked, mask
    loaded); otherwise a FULL tile, which lies inside the keys and needs neither."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    k_ptrs = k_base + offs_n[None, :] * stride_kn + offs_d[:, None]  # (d, N): K transposed
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]  # (N, d)
    if APPLY_MASK:
        key_ok = offs_n < Lk
        kt = tl.load(k_ptrs, mask=key_ok[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=key_ok[:, None], other=0.0)
    else:
        kt = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale  # (M, N), log2 units
    if APPLY_MASK:
        visible = tl.load(mask_base + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn,
                          mask=(offs_m < Lq)[:, None] & key_ok[None, :], other=0)
        qk = tl.where(visible != 0, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row that has seen no visible key keeps m = -inf; subtract 0 instead so p = 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.autotune(configs=_CONFIGS, key=["Lq", "Lk", "HEAD_DIM", "KEY_TILES"])
@triton.jit
def _block_causal_kernel(
        Q, K, V, O, MASK, SUMMARY, qk_scale,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_ob, stride_oh, stride_om,
        stride_mm, stride_mn,
        Hq, Lq, Lk,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, KEY_TILES: tl.constexpr,
        UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (query blocks, B * Hq): one query block of one head against every key tile."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(HEAD_DIM >= 16 and HEAD_DIM <= 256, "head size outside 16..256")
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = pid_bh % Hq
    h_kv = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < Lq
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # KEY_TILES is a compile-time trip count: Triton 3.6's interpreter cannot run loops with
    # runtime bounds under numpy >= 2.4 (triton-lang/triton#9171); padding tiles are SKIP.
    for j in range(0, KEY_TILES):
        kind = tl.load(SUMMARY + pid_m * KEY_TILES + j)
        if kind == _FULL:
            acc, m_i, l_i = _masked_tile(acc, m_i, l_i, q, k_base, v_base, MASK, offs_m, stride_kn,
                                         stride_vn, stride_mm, stride_mn, j * BLOCK_N, Lq, Lk, qk_scale,
                                         BLOCK_N, HEAD_DIM, False, UPCAST, INPUT_PRECISION)
        elif kind == _MIXED:
            acc, m_i, l_i = _masked_tile(acc, m_i, l_i, q, k_base, v_base, MASK, offs_m, stride_kn,
                                         stride_vn, stride_mm, stride_mn, j * BLOCK_N, Lq, Lk, qk_scale,
                                         BLOCK_N, HEAD_DIM, True, UPCAST, INPUT_PRECISION)
    # Rows with no visible key have l = 0 and acc = 0: divide by 1 and write 0.
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=row_ok[:, None])


def block_causal_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | TileMask,
                           out: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) where mask, else -inf) v; fully masked rows give 0.

    q (B, Hq, Lq, d), k and v (B, Hkv, Lk, d); mask a bool (Lq, Lk) tensor (summarised here
    with `default_blocks`) or a TileMask built once for many calls. out: an optional
    (B, Hq, Lq, d) buffer of q's dtype. Any strides with stride 1 in the last dimension."""
    where = "block_causal_attention"
    B, Hq, Hkv, Lq, Lk, d = check_attention_inputs(where, q, k, v)
    tiles = mask if isinstance(mask, TileMask) else tile_mask(mask, *default_blocks(d, q.dtype))
    if tuple(tiles.mask.shape) != (Lq, Lk):
        raise ValueError(f"{where}: mask must be (Lq, Lk) = ({Lq}, {Lk}) for q {tuple(q.shape)} and "
                         f"k {tuple(k.shape)}, found {tuple(tiles.mask.shape)}")
    check_device(where, q=q, mask=tiles.mask, summary=tiles.summary)
    out = check_out(where, out, q.shape, q) if out is not None else torch.empty_like(q)
    grid = (triton.cdiv(Lq, tiles.block_m), B * Hq)
    _block_causal_kernel[grid](
        q, k, v, out, tiles.mask, tiles.summary, LOG2E / math.sqrt(d),
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *tiles.mask.stride(),
        Hq, Lq, Lk, GROUP=Hq // Hkv, HEAD_DIM=d, KEY_TILES=tiles.key_tiles,
        UPCAST=upcast_tiles(q.dtype), INPUT_PRECISION=dot_precision(q.dtype),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n)
    return out
