"""Tensors embedded in NaN-filled buffers, and the tolerances of the kernel tests.

A kernel under test reads its inputs from, and writes its output into, strided views whose
surroundings are NaN: an out-of-bounds read shows up as NaN in the result, an out-of-bounds
write as a non-NaN outside the view. The views are also non-contiguous (padded rows, heads,
batches), as the KV cache's valid prefix and transposed projections are in the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Per dtype: max |kernel - reference| <= atol + rtol |reference|. fp32: summation order only.
# fp16/bf16: the kernels round softmax probabilities to the input dtype before the P V
# product (as flash attention does) and round the output once; the references stay fp32.
TOLERANCE: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"atol": 2e-5, "rtol": 2e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}

PAD = 2  # entries of NaN on each side of every dimension but the last
PAD_LAST = 8  # ... and of the last (8 keeps 16-byte alignment for every dtype)


@dataclass
class Guarded:
    """A view `buf[index]` whose surroundings in `buf` are NaN."""
    buf: Tensor
    index: tuple[slice, ...]

    @property
    def view(self) -> Tensor:
        return self.buf[self.index]

    def outside_is_nan(self) -> bool:
        outside = torch.ones(self.buf.shape, dtype=torch.bool, device=self.buf.device)
        outside[self.index] = False
        return bool(self.buf[outside].isnan().all())


def nan_guarded(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Guarded:
    """A NaN-filled view of `shape` (to be written by a kernel) inside a larger NaN buffer."""
    pads = [PAD] * (len(shape) - 1) + [PAD_LAST]
    buf = torch.full([s + 2 * p for s, p in zip(shape, pads)], float("nan"), dtype=dtype,
                     device=device)
    return Guarded(buf, tuple(slice(p, p + s) for s, p in zip(shape, pads)))


def guarded_copy(t: Tensor) -> Guarded:
    """A copy of t as a view inside a larger NaN buffer."""
    g = nan_guarded(tuple(t.shape), t.dtype, t.device)
    g.view.copy_(t)
    return g


def randn(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Normal samples drawn in fp32 on CPU (the same numbers on every device and dtype)."""
    return torch.randn(*shape).to(device=device, dtype=dtype)


def assert_matches(got: Tensor, want: Tensor, dtype: torch.dtype, what: str) -> None:
    """got == want within the dtype's TOLERANCE; no NaN anywhere in got."""
    assert not got.isnan().any(), f"{what}: NaN in the kernel's output (out-of-bounds read?)"
    torch.testing.assert_close(got.float(), want.float(), **TOLERANCE[dtype], msg=lambda m: f"{what}: {m}")
