"""Chunk-vs-cache attention with no mask: the serving path, split over the keys.

A chunk of Lq queries (1 text slot .. a few hundred obs/resp tokens) attends to all Lk keys
of the KV cache's valid prefix, which already holds the chunk itself. At batch 1 there are
too few (query block, head) pairs to fill a GPU, so the keys are cut into splits, as in
flash-decoding: one program per (query block, batch x kv head, split) runs an online softmax
over its split and writes a normalised partial output and its log-sum-exp; a merge kernel
weighs the partials into the result. With one split the first kernel writes the result
itself and the merge is skipped. The split length is a compile-time power of two, so each
program's loop has a fixed trip count (pipelined on a GPU, and runnable by Triton 3.6's
interpreter) and a cache growing unit by unit compiles only a handful of variants; tiles
past Lk in the last split load nothing.

GQA: a program serves all `group = Hq / Hkv` query heads that read one kv head, packed as
rows (group member, query), so each K/V tile is loaded once for the whole group.
Softmax statistics live in fp32 in base 2: log2(e) is folded into the scale and exp2 is used.
The reference is kernels/attention_reference.py; this file never applies a mask.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.launch import (INTERPRET, autotune_configs, check_attention_inputs, check_out,
                            dot_precision, upcast_tiles)

LOG2E = 1.4426950408889634
MIN_KEYS_PER_SPLIT = 256  # below this a split's fixed cost outweighs the parallelism it adds
MIN_SPLIT_LEN = 16 if INTERPRET else 128  # >= every BLOCK_N of the configs below
NOMINAL_BLOCK_M = 64  # rows per program assumed when choosing the number of splits

_SPLIT_CONFIGS = autotune_configs(
    gpu=[triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
         for bm, bn, w, s in ((16, 64, 4, 3), (16, 128, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3),
                              (128, 64, 8, 3), (128, 128, 8, 2))],
    interpret=triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}))


def _small_tiles_for_fp32(configs: list[triton.Config], named_args: dict, **_: object) -> list[triton.Config]:
    """fp32 tiles take twice the registers and shared memory of 16-bit ones (and fp32 runs
    only in tests on a GPU): time the small configurations only."""
    if named_args["Q"].dtype != torch.float32:
        return configs
    return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]


@triton.jit
def _chunk_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start, hi, qk_scale,
                BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr,
                INPUT_PRECISION: tl.constexpr):
    """One key tile [start, start + BLOCK_N) of the online softmax; keys >= hi are left out."""
    offs_n = start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_split = offs_n < hi
    kt = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None], mask=in_split[None, :],
                 other=0.0)  # (d, N): K transposed
    v = tl.load(v_base + offs_n[:, None] * stride_vn + offs_d[None, :], mask=in_split[:, None],
                other=0.0)  # (N, d)
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale  # (M, N), log2 units
    qk = tl.where(in_split[None, :], qk, float("-inf"))
    # Finite: a split's first tile holds at least one key, so m_i is finite from then on.
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.autotune(configs=_SPLIT_CONFIGS, key=["n_rows", "HEAD_DIM", "SPLIT_LEN"],
                 prune_configs_by={"early_config_prune": _small_tiles_for_fp32})
@triton.jit
def _chunk_split_kernel(
        Q, K, V, O, LSE, qk_scale,
        stride_qb, stride_qh, stride_qm,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_os, stride_ob, stride_oh, stride_om,
        stride_ls, stride_lb, stride_lh,
        Hkv, Lq, Lk, n_rows,
        GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, SPLIT_LEN: tl.constexpr,
        STORE_LSE: tl.constexpr, UPCAST: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (row blocks, B * Hkv, splits); split s covers keys [s * SPLIT_LEN, (s + 1) * SPLIT_LEN).

    STORE_LSE: write fp32 partials and their log2-sum-exp2 for the merge; otherwise O is the
    final output (one split) in the inputs' dtype."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs tiles of at least 16")
    tl.static_assert(HEAD_DIM >= 16 and HEAD_DIM <= 256, "head size outside 16..256")
    tl.static_assert(SPLIT_LEN % BLOCK_N == 0, "a split is a whole number of key tiles")
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    split = tl.program_id(2)
    b = (pid_bh // Hkv).to(tl.int64)  # batch strides of a large cache pass 2^31
    h_kv = pid_bh % Hkv
    # Rows are (group member, query) pairs of the query heads that read kv head h_kv.
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    h_q = h_kv * GROUP + rows // Lq
    m = rows % Lq
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h_q[:, None] * stride_qh + m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * stride_kb + h_kv * stride_kh
    v_base = V + b * stride_vb + h_kv * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    lo = split * SPLIT_LEN
    hi = tl.minimum(lo + SPLIT_LEN, Lk)
    # A compile-time trip count: the GPU pipelines the loop, and Triton 3.6's interpreter cannot
    # run loops with runtime bounds under numpy >= 2.4 (triton-lang/triton#9171). Tiles past Lk
    # (only in the last split) load nothing and add nothing.
    for start in range(0, SPLIT_LEN, BLOCK_N):
        acc, m_i, l_i = _chunk_tile(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, lo + start,
                                    hi, qk_scale, BLOCK_N, HEAD_DIM, UPCAST, INPUT_PRECISION)
    acc = acc / l_i[:, None]
    o_ptrs = (O + split * stride_os + b * stride_ob + h_q[:, None] * stride_oh + m[:, None] * stride_om
              + offs_d[None, :])
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None])
    if STORE_LSE:
        tl.store(LSE + split * stride_ls + b * stride_lb + h_q * stride_lh + m, m_i + tl.math.log2(l_i),
                 mask=row_ok)


@triton.jit
def _chunk_merge_kernel(
        P, LSE, O,
        stride_ps, stride_pb, stride_ph, stride_pm,
        stride_ls, stride_lb, stride_lh,
        stride_ob, stride_oh, stride_om,
        Hq, Lq, n_splits,
        HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    """Grid (Lq, B * Hq), one output row a program: O = sum_s 2^lse_s P_s / sum_s 2^lse_s."""
    m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    s_ok = offs_s < n_splits
    lse = tl.load(LSE + offs_s * stride_ls + b * stride_lb + h * stride_lh + m, mask=s_ok,
                  other=float("-inf"))  # (S,)
    part = tl.load(P + offs_s[:, None] * stride_ps + b * stride_pb + h * stride_ph + m * stride_pm
                   + offs_d[None, :], mask=s_ok[:, None], other=0.0)  # (S, d)
    w = tl.math.exp2(lse - tl.max(lse, 0))  # 0 for the padding splits
    o = tl.sum(part * w[:, None], 0) / tl.sum(w, 0)
    tl.store(O + b * stride_ob + h * stride_oh + m * stride_om + offs_d, o.to(O.dtype.element_ty))


def default_splits(n_rows: int, B: int, Hkv: int, Lk: int, device: torch.device) -> int:
    """Enough splits for about two programs per SM, each split at least MIN_KEYS_PER_SPLIT keys."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    programs = triton.cdiv(n_rows, NOMINAL_BLOCK_M) * B * Hkv
    return max(1, min(triton.cdiv(2 * sms, programs), Lk // MIN_KEYS_PER_SPLIT))


def split_plan(Lk: int, num_splits: int) -> tuple[int, int]:
    """(keys per split, splits) for at most `num_splits` splits, no split empty.

    The split length is a power of two (at least MIN_SPLIT_LEN): it is a compile-time constant
    of the kernel, so the powers of two bound how many variants a growing cache compiles."""
    split_len = max(MIN_SPLIT_LEN, triton.next_power_of_2(triton.cdiv(Lk, num_splits)))
    return split_len, triton.cdiv(Lk, split_len)


def chunk_attention(q: Tensor, k: Tensor, v: Tensor, num_splits: int | None = None,
                    out: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over all keys: q (B, Hq, Lq, d), k and v (B, Hkv, Lk, d).

    num_splits: at most this many key splits (None: enough to fill the GPU; one split when the
    batch alone fills it, whose loop then runs to the next power of two). out: an optional
    (B, Hq, Lq, d) buffer of q's dtype to write into. Any strides with stride 1 in the last
    dimension (the cache's valid prefix, transposed projections). Returns out."""
    where = "chunk_attention"
    B, Hq, Hkv, Lq, Lk, d = check_attention_inputs(where, q, k, v)
    out = check_out(where, out, q.shape, q) if out is not None else torch.empty_like(q)
    group = Hq // Hkv
    n_rows = group * Lq
    if num_splits is None:
        num_splits = default_splits(n_rows, B, Hkv, Lk, q.device)
    elif num_splits < 1:
        raise ValueError(f"{where}: num_splits must be >= 1 or None, found {num_splits}")
    split_len, num_splits = split_plan(Lk, num_splits)
    flags = dict(GROUP=group, HEAD_DIM=d, SPLIT_LEN=split_len, UPCAST=upcast_tiles(q.dtype),
                 INPUT_PRECISION=dot_precision(q.dtype))
    qk_scale = LOG2E / math.sqrt(d)

    def grid(meta: dict) -> tuple[int, int, int]:
        return triton.cdiv(n_rows, meta["BLOCK_M"]), B * Hkv, num_splits

    qkv_strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    if num_splits == 1:  # the split is the whole result: no partials, no merge
        _chunk_split_kernel[grid](q, k, v, out, out, qk_scale, *qkv_strides, 0, *out.stride()[:3],
                                  0, 0, 0, Hkv, Lq, Lk, n_rows, STORE_LSE=False, **flags)
        return out
    partial = torch.empty((num_splits, B, Hq, Lq, d), device=q.device, dtype=torch.float32)
    lse = torch.empty((num_splits, B, Hq, Lq), device=q.device, dtype=torch.float32)
    p_strides, l_strides = partial.stride()[:4], lse.stride()[:3]
    _chunk_split_kernel[grid](q, k, v, partial, lse, qk_scale, *qkv_strides, *p_strides, *l_strides,
                              Hkv, Lq, Lk, n_rows, STORE_LSE=True, **flags)
    _chunk_merge_kernel[(Lq, B * Hq)](partial, lse, out, *p_strides, *l_strides, *out.stride()[:3],
                                      Hq, Lq, num_splits, HEAD_DIM=d,
                                      BLOCK_S=triton.next_power_of_2(num_splits), num_warps=4)
    return out
