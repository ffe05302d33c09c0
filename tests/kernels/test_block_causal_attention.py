"""Masked flash attention equals the reference attention under the model's kind of mask.

Masks: block-causal like the model's (segments of varying sizes, bidirectional within a
segment, causal text slots, every earlier segment visible), its last rows alone (a chunk
against its prefix), the model's own tiny-preset mask, and random masks. Fully masked rows
must come out as 0. Tolerances: tests/kernels/guarded.py (TOLERANCE).
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kernels.attention_reference import attention_reference
from kernels.block_causal_attention import (FULL, MIXED, SKIP, block_causal_attention, tile_mask,
                                            tile_summary)
from model.config import preset as model_preset
from tests.kernels.guarded import assert_matches, guarded_copy, nan_guarded, randn

# Sinks, then units [obs (bidirectional) | text (causal slots) | resp (bidirectional)].
SEGMENTS = [("bi", 9), ("bi", 6), ("causal", 3), ("bi", 13), ("bi", 7), ("causal", 4), ("bi", 11),
            ("bi", 6), ("causal", 3), ("bi", 9)]  # 71 tokens


def block_causal(segments: list[tuple[str, int]]) -> Tensor:
    """(L, L) bool: a token sees earlier segments, its own if bidirectional, earlier slots if causal."""
    seg = torch.cat([torch.full((n,), i) for i, (_, n) in enumerate(segments)])
    causal = torch.cat([torch.full((n,), kind == "causal") for kind, n in segments])
    pos = torch.arange(seg.numel())
    same = seg[:, None] == seg[None, :]
    return (seg[None, :] < seg[:, None]) | (same & (~causal[:, None] | (pos[None, :] <= pos[:, None])))


def random_mask(Lq: int, Lk: int, empty_rows: tuple[int, ...] = ()) -> Tensor:
    mask = torch.rand(Lq, Lk) < 0.4
    mask[list(empty_rows)] = False
    return mask


def masked_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """The reference, with 0 (not NaN) for rows that see no key."""
    return attention_reference(q, k, v, mask).masked_fill(~mask.any(1)[:, None], 0.0)


MASKS = {
    "block-causal": lambda: block_causal(SEGMENTS),
    "chunk-rows": lambda: block_causal(SEGMENTS)[-22:],
    "random": lambda: random_mask(33, 131),
    "random,empty-rows": lambda: random_mask(7, 70, empty_rows=(0, 4)),
}
GEOMETRIES = [  # (B, Hq, Hkv, d)
    pytest.param(1, 4, 2, 16, id="B=1,gqa=2,d=16"),
    pytest.param(2, 3, 3, 32, id="B=2,mha,d=32"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, Hq, Hkv, d", GEOMETRIES)
@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_masked_attention_equals_reference_and_stays_in_bounds(
        mask_kind: str, B: int, Hq: int, Hkv: int, d: int, dtype: torch.dtype,
        device: torch.device) -> None:
    mask = MASKS[mask_kind]().to(device)
    Lq, Lk = mask.shape
    q, k, v = (guarded_copy(randn(B, h, L, d, dtype=dtype, device=device))
               for h, L in ((Hq, Lq), (Hkv, Lk), (Hkv, Lk)))
    out = nan_guarded((B, Hq, Lq, d), dtype, device)
    got = block_causal_attention(q.view, k.view, v.view, mask, out=out.view)
    assert_matches(got, masked_reference(q.view, k.view, v.view, mask), dtype, mask_kind)
    assert out.outside_is_nan(), "masked attention wrote outside its output"


def test_rows_that_see_no_key_are_zero_not_nan(device: torch.device) -> None:
    mask = random_mask(33, 70, empty_rows=(0, 16, 17, 32)).to(device)
    mask[:, 48:] = False  # whole SKIP tiles too
    q = randn(1, 2, 33, 16, dtype=torch.float32, device=device)
    k, v = (randn(1, 2, 70, 16, dtype=torch.float32, device=device) for _ in range(2))
    got = block_causal_attention(q, k, v, mask)
    assert not got.isnan().any()
    assert torch.equal(got[:, :, [0, 16, 17, 32]], torch.zeros_like(got[:, :, [0, 16, 17, 32]]))


@pytest.mark.parametrize("block_m, block_n", [(16, 16), (16, 32), (32, 16), (64, 64)],
                         ids=["tile=16x16", "tile=16x32", "tile=32x16", "tile=64x64"])
@pytest.mark.parametrize("mask_kind", list(MASKS))
def test_tile_summary_classifies_every_tile(mask_kind: str, block_m: int, block_n: int) -> None:
    mask = MASKS[mask_kind]()
    Lq, Lk = mask.shape
    summary = tile_summary(mask, block_m, block_n)
    for i in range(summary.shape[0]):
        for j in range(summary.shape[1]):
            rows = mask[i * block_m:(i + 1) * block_m]  # rows past Lq are never stored
            tile = rows[:, j * block_n:(j + 1) * block_n]
            reaches_past_keys = (j + 1) * block_n > Lk
            want = SKIP if not tile.any() else FULL if tile.all() and not reaches_past_keys else MIXED
            assert summary[i, j] == want, f"tile ({i}, {j}) of {mask_kind}"


def test_block_causal_mask_uses_all_three_tile_kinds() -> None:
    """So the equality tests above run the skip, the no-mask-load and the masked paths."""
    kinds = set(tile_summary(block_causal(SEGMENTS), 16, 16).unique().tolist())
    assert kinds == {SKIP, FULL, MIXED}


@pytest.mark.parametrize("block_m, block_n", [(16, 32), (32, 16)], ids=["tile=16x32", "tile=32x16"])
def test_a_tile_mask_built_once_serves_many_calls(block_m: int, block_n: int,
                                                  device: torch.device) -> None:
    mask = block_causal(SEGMENTS).to(device)
    tiles = tile_mask(mask, block_m, block_n)
    for layer in range(2):
        q = randn(1, 4, 71, 16, dtype=torch.float32, device=device)
        k, v = (randn(1, 2, 71, 16, dtype=torch.float32, device=device) for _ in range(2))
        assert_matches(block_causal_attention(q, k, v, tiles), attention_reference(q, k, v, mask),
                       torch.float32, f"layer {layer}")


def test_mask_errors_name_the_expected_shape(device: torch.device) -> None:
    q = randn(1, 2, 7, 16, dtype=torch.float32, device=device)
    k = randn(1, 2, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"mask must be \(Lq, Lk\) = \(7, 9\)"):
        block_causal_attention(q, k, k, torch.ones(7, 8, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="2-D bool"):
        block_causal_attention(q, k, k, torch.ones(7, 9, device=device))
    with pytest.raises(ValueError, match="power of two >= 16"):
        tile_mask(torch.ones(7, 9, dtype=torch.bool), 16, 24)


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["base", "large"])
def test_bf16_block_causal_attention_equals_reference_on_gpu(preset: str) -> None:
    t = model_preset(preset).transformer
    dev = torch.device("cuda")
    mask = block_causal(SEGMENTS * 12).to(dev)  # 852 tokens
    L = mask.shape[0]
    q = randn(1, t.n_heads, L, t.head_dim, dtype=torch.bfloat16, device=dev)
    k, v = (randn(1, t.n_kv_heads, L, t.head_dim, dtype=torch.bfloat16, device=dev) for _ in range(2))
    assert_matches(block_causal_attention(q, k, v, mask), attention_reference(q, k, v, mask),
                   torch.bfloat16, preset)
