"""Training's attention under a SparseMask (model/attention.py) equals it under the dense mask,
forward and backward, and visits only the keys some query of each block sees."""
from __future__ import annotations

import pytest
import torch

from kernels.attention_reference import attention_reference
from model.attention import SparseMask, attend
from model.config import tiny
from model.duplex import build_model
from model.layout import block_causal_mask, sequence_meta


@pytest.mark.parametrize("window, block", [(3, 16), (3, 7), (None, 32)])
def test_sparse_attention_equals_the_dense_mask_forward_and_backward(window: int | None, block: int) -> None:
    model = build_model(tiny(), seed=0)
    lay = model.layout
    meta = sequence_meta(lay, model.geometry, 6)
    dense = block_causal_mask(meta, meta, lay, window)
    L = dense.shape[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, L, 16, generator=g, requires_grad=True) for h in (4, 2, 2))
    sparse = SparseMask.of(dense, block)
    out = attend(q, k, v, sparse, "sdpa")
    ref = attention_reference(q, k, v, dense)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(out.shape, generator=g)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if window is not None:  # the window hides most of the sequence: each block gathers less
        assert sparse.keys.shape[1] < 0.8 * L
    # every key a block's queries see is among its gathered keys, and only those are kept
    blocks = torch.cat([dense, dense[-1:].expand(sparse.keys.shape[0] * block - L, L)])  # padding rows: the last's
    for b, rows in enumerate(blocks.view(-1, block, L)):
        rebuilt = torch.zeros(block, L, dtype=torch.bool).scatter(1, sparse.keys[b].expand(block, -1), sparse.keep[b])
        assert torch.equal(rebuilt, rows)
