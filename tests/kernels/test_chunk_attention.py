"""Chunk-vs-cache attention (split-KV) equals the reference attention, with no mask.

Under the interpreter (CPU) in fp32 and fp16 on small odd shapes; on a GPU in bf16 too, at
the head layouts of the base and large presets, and against torch SDPA for speed.
Tolerances: tests/kernels/guarded.py (TOLERANCE).
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from kernels.attention_reference import attention_reference
from kernels.chunk_attention import MIN_SPLIT_LEN, chunk_attention, split_plan
from model.config import preset as model_preset
from tests.kernels.guarded import assert_matches, guarded_copy, nan_guarded, randn

# (B, Hq, Hkv, Lq, Lk, d, splits asked for)
GEOMETRIES = [
    pytest.param(1, 4, 2, 7, 131, 16, 3, id="Lq=7,Lk=131,d=16,gqa=2,splits=3"),
    pytest.param(1, 4, 2, 1, 70, 32, 2, id="Lq=1,Lk=70,d=32,gqa=2,splits=2"),
    pytest.param(2, 3, 3, 33, 70, 32, 1, id="B=2,Lq=33,Lk=70,d=32,mha,splits=1"),
    pytest.param(1, 3, 3, 7, 5, 16, 4, id="Lq=7,Lk=5,d=16,mha,keys<tile"),
    pytest.param(1, 4, 1, 1, 131, 16, 8, id="Lq=1,Lk=131,d=16,gqa=4,splits=8"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, Hq, Hkv, Lq, Lk, d, splits", GEOMETRIES)
def test_chunk_attention_equals_reference_and_stays_in_bounds(
        B: int, Hq: int, Hkv: int, Lq: int, Lk: int, d: int, splits: int, dtype: torch.dtype,
        device: torch.device) -> None:
    q, k, v = (guarded_copy(randn(B, h, L, d, dtype=dtype, device=device))
               for h, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    out = nan_guarded((B, Hq, Lq, d), dtype, device)
    got = chunk_attention(q.view, k.view, v.view, num_splits=splits, out=out.view)
    assert got.data_ptr() == out.view.data_ptr()
    assert_matches(got, attention_reference(q.view, k.view, v.view), dtype, "chunk attention")
    assert out.outside_is_nan(), "chunk attention wrote outside its output"
    assert all(t.outside_is_nan() for t in (q, k, v)), "chunk attention wrote into its inputs"


@pytest.mark.parametrize("Lk", [pytest.param(131, id="Lk=131"), pytest.param(48, id="Lk=48,whole-tiles")])
def test_every_split_count_gives_the_same_output(Lk: int, device: torch.device) -> None:
    q = randn(1, 4, 3, 16, dtype=torch.float32, device=device)
    k, v = (randn(1, 2, Lk, 16, dtype=torch.float32, device=device) for _ in range(2))
    one = chunk_attention(q, k, v, num_splits=1)
    for splits in (2, 3, 5, Lk):
        assert_matches(chunk_attention(q, k, v, num_splits=splits), one, torch.float32,
                       f"{splits} splits vs one")


def test_kv_cache_prefix_view_is_read_in_place(device: torch.device) -> None:
    """The serving call: k, v are the valid prefix of a preallocated cache, q a transposed
    projection; only the prefix is read (the rows past it are NaN)."""
    B, Hq, Hkv, L, d, capacity, visible = 1, 4, 2, 7, 16, 96, 61
    cache_k = torch.full((B, Hkv, capacity, d), float("nan"), device=device)
    cache_v = torch.full((B, Hkv, capacity, d), float("nan"), device=device)
    cache_k[:, :, :visible] = randn(B, Hkv, visible, d, dtype=torch.float32, device=device)
    cache_v[:, :, :visible] = randn(B, Hkv, visible, d, dtype=torch.float32, device=device)
    q = randn(B, L, Hq, d, dtype=torch.float32, device=device).transpose(1, 2)  # (B, Hq, L, d)
    k, v = cache_k[:, :, :visible], cache_v[:, :, :visible]
    assert_matches(chunk_attention(q, k, v, num_splits=3), attention_reference(q, k, v),
                   torch.float32, "cache prefix")


@pytest.mark.parametrize("Lk, asked", [(131, 3), (5, 4), (1000, 1), (70, 70), (100_000, 17)])
def test_split_plan_covers_the_keys_with_no_empty_split(Lk: int, asked: int) -> None:
    split_len, splits = split_plan(Lk, asked)
    assert 1 <= splits <= asked
    assert split_len >= MIN_SPLIT_LEN and split_len & (split_len - 1) == 0
    assert (splits - 1) * split_len < Lk <= splits * split_len


def test_bad_inputs_are_errors_that_name_the_fix(device: torch.device) -> None:
    q = randn(1, 4, 3, 16, dtype=torch.float32, device=device)
    k = randn(1, 3, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"query heads \(4\) must be a multiple of key/value heads \(3\)"):
        chunk_attention(q, k, k)
    k = randn(1, 2, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(TypeError, match="expected one dtype"):
        chunk_attention(q, k.half(), k)
    with pytest.raises(ValueError, match=r"stride 1 in its last dimension.*contiguous\(\)"):
        chunk_attention(q.transpose(2, 3).contiguous().transpose(2, 3), k, k)
    with pytest.raises(ValueError, match="head size 24 is not tiled"):
        chunk_attention(q[..., :12].repeat(1, 1, 1, 2), k[..., :12].repeat(1, 1, 1, 2), k[..., :12].repeat(1, 1, 1, 2))
    with pytest.raises(ValueError, match="out must be"):
        chunk_attention(q, k, k, out=torch.empty(1, 4, 3, 8, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["base", "large"])
@pytest.mark.parametrize("Lq, Lk", [(1, 4099), (64, 8192), (257, 2000)])
def test_bf16_chunk_attention_equals_reference_on_gpu(preset: str, Lq: int, Lk: int) -> None:
    t = model_preset(preset).transformer
    dev = torch.device("cuda")
    q = randn(1, t.n_heads, Lq, t.head_dim, dtype=torch.bfloat16, device=dev)
    k, v = (randn(1, t.n_kv_heads, Lk, t.head_dim, dtype=torch.bfloat16, device=dev) for _ in range(2))
    assert_matches(chunk_attention(q, k, v), attention_reference(q, k, v), torch.bfloat16,
                   f"{preset} Lq={Lq} Lk={Lk}")


def _median_ms(fn: Callable[[], object], reps: int = 20) -> float:
    fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@pytest.mark.gpu
def test_split_kv_decode_is_within_2x_of_sdpa_and_beats_the_reference_on_gpu() -> None:
    """Batch 1, one query row per head against 32k keys: only the split over keys fills the GPU."""
    dev = torch.device("cuda")
    q = randn(1, 16, 1, 128, dtype=torch.bfloat16, device=dev)
    k, v = (randn(1, 8, 32768, 128, dtype=torch.bfloat16, device=dev) for _ in range(2))
    triton_ms = _median_ms(lambda: chunk_attention(q, k, v))
    sdpa_ms = _median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    ref_ms = _median_ms(lambda: attention_reference(q, k, v))
    assert triton_ms < ref_ms, f"triton {triton_ms:.3f} ms vs eager reference {ref_ms:.3f} ms"
    assert triton_ms < 2 * sdpa_ms, f"triton {triton_ms:.3f} ms vs SDPA {sdpa_ms:.3f} ms"
