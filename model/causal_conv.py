"""Streaming causal convolutions: the building blocks of the AV VAE and the AV encoder.

Video tensors are (B, T, C, H, W) (frames first, so folding time into the batch or into the
channels is a view); audio tensors are (B, C, L). Every layer is causal in time: it sees the
present and the past, never the future. The past before a call comes from a `ConvState` the
caller owns and passes in: each streaming layer reads its own buffer (the last frames or
samples it saw) and overwrites it in place. Zero buffers are silence before the clip, so a
clip cut into units and streamed gives exactly the output of the whole clip at once.

Space is never streamed: spatial kernels pad both sides; spatial down/up-sampling is a
strided conv / sub-pixel conv (pixel shuffle); time down/up-sampling folds pairs of frames
into channels and back, which needs no state as long as every call holds whole units.

Pure PyTorch: no processes, no sockets, no clocks; no module holds a session's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTH_CAP = 512  # channels never grow past this when widths double per stage
MATMUL_RATIO = 4  # a 1-D conv with Cin k >= 4 outputs runs as one matmul (CausalConv1d._matmul)


def stage_widths(first: int, stages: int) -> list[int]:
    """Channels of each resolution stage: `first`, doubling per downsampling, capped."""
    return [min(first * 2 ** i, WIDTH_CAP) for i in range(stages)]


@dataclass
class ConvState:
    """Left context of one network's streaming layers for one session.

    buffers[i] belongs to the layer whose `slot` is i: (B, kt - 1, C, h, w) for a video conv
    (its last input frames), (B, C, context) for an audio conv (its last input samples).
    """
    buffers: list[Tensor]

    def reset(self, slot: int | None = None) -> None:
        """Back to silence: the next call starts a new clip (in batch row `slot` only, if given)."""
        for b in self.buffers:
            (b if slot is None else b[slot]).zero_()


class ChannelRMSNorm(nn.Module):
    """RMSNorm over channels at each (time, position): never mixes time, so it streams."""

    def __init__(self, channels: int, channel_dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.channel_dim = channel_dim
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(self.channel_dim, keepdim=True) + self.eps)
        shape = [1] * (-self.channel_dim)
        shape[0] = -1
        return xf.to(x.dtype) * self.weight.view(shape)


class CausalConv3d(nn.Module):
    """Conv over (time, row, column) with kernel (kt, k, k): causal in time, 'same' in space
    (or strided by `stride`). (B, T, Cin, h, w) -> (B, T, Cout, h / stride, w / stride).

    It is computed as a 2-D conv over the kt frames t-kt+1 .. t stacked on channels (oldest
    first), which is the 3-D conv exactly and many times faster than conv3d on CPU. The weight
    is (Cout, kt * Cin, k, k): weight[:, j * Cin:(j + 1) * Cin] is the tap on frame t-kt+1+j.
    """
    channel_dim = -3

    def __init__(self, cin: int, cout: int, kt: int, hw: tuple[int, int], k: int = 3,
                 stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(kt * cin, cout, k, stride, padding=k // 2)
        self.in_channels, self.kt, self.context = cin, kt, kt - 1
        self.buffer_shape = (kt - 1, cin, *hw)
        self.slot: int | None = None  # its buffer's index in the network's ConvState (number_layers)

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        B, T = x.shape[:2]
        if self.context:
            buf = state.buffers[self.slot]
            xp = torch.cat([buf, x], dim=1)  # (B, kt - 1 + T, Cin, h, w)
            buf.copy_(xp[:, T:].detach())
            x = torch.cat([xp[:, j:j + T] for j in range(self.kt)], dim=2)  # (B, T, kt Cin, h, w)
        return self.conv(x.flatten(0, 1)).unflatten(0, (B, T))


class CausalConv1d(nn.Module):
    """Causal 1-D conv, (B, Cin, L) -> (B, Cout, L / stride); L a multiple of stride.

    Output i sees inputs up to i * stride + stride - 1: the left context is
    (k - 1) * dilation + 1 - stride samples, zeros before the clip, the buffer while streaming.
    """
    channel_dim = -2

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride, dilation=dilation)
        self.in_channels = cin
        self.context = (k - 1) * dilation + 1 - stride
        if self.context < 0:
            raise ValueError(f"CausalConv1d(k={k}, stride={stride}, dilation={dilation}) would skip "
                             f"input samples: use k >= stride")
        self.buffer_shape = (cin, self.context)
        self.slot: int | None = None

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        if self.context:
            buf = state.buffers[self.slot]
            x = torch.cat([buf, x], dim=-1)  # (B, Cin, context + L)
            buf.copy_(x[..., x.shape[-1] - self.context:].detach())
        k, = self.conv.kernel_size
        s, = self.conv.stride
        outputs = (x.shape[-1] - self.context - 1) // s + 1
        if self.in_channels * k >= MATMUL_RATIO * outputs:
            return self._matmul(x, outputs)
        return self.conv(x)

    def _matmul(self, x: Tensor, outputs: int) -> Tensor:
        """The conv as one matmul over the unfolded input (im2col): for short, wide inputs
        (the low-rate stages), where torch's conv1d takes its slow unfused path on CPU."""
        w = self.conv.weight  # (Cout, Cin, k)
        k, = self.conv.kernel_size
        (s,), (d,) = self.conv.stride, self.conv.dilation
        cols = x.unfold(-1, (k - 1) * d + 1, s)[..., ::d]  # (B, Cin, outputs, k)
        cols = cols.transpose(2, 3).reshape(x.shape[0], -1, outputs)  # (B, Cin k, outputs)
        y = torch.matmul(w.reshape(w.shape[0], -1), cols)  # (B, Cout, outputs)
        return y if self.conv.bias is None else y.add_(self.conv.bias[:, None])


CausalConv = CausalConv3d | CausalConv1d


class PreAct(nn.Module):
    """RMSNorm over channels -> SiLU -> causal conv."""

    def __init__(self, conv: CausalConv):
        super().__init__()
        self.norm = ChannelRMSNorm(conv.in_channels, conv.channel_dim)
        self.conv = conv

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        return self.conv(F.silu(self.norm(x)), state)


class Residual(nn.Module):
    """x + f(x), f a chain of pre-activated causal convs."""

    def __init__(self, *convs: CausalConv):
        super().__init__()
        self.layers = nn.ModuleList(PreAct(c) for c in convs)

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        h = x
        for layer in self.layers:
            h = layer(h, state)
        return x + h


def res_block_3d(channels: int, hw: tuple[int, int], kt: int) -> Residual:
    """A (kt, 3, 3) causal conv that mixes time, then a (1, 3, 3) conv in space."""
    return Residual(CausalConv3d(channels, channels, kt, hw), CausalConv3d(channels, channels, 1, hw))


def res_block_1d(channels: int, k: int, dilation: int) -> Residual:
    """A dilated causal conv of kernel k, then a pointwise conv."""
    return Residual(CausalConv1d(channels, channels, k, dilation=dilation),
                    CausalConv1d(channels, channels, 1))


class Down3d(nn.Module):
    """Halve space (stride-2 conv) and, with `fold_time`, halve time by folding frames 2t and
    2t+1 into channels first: (B, T, Cin, h, w) -> (B, T / f, Cout, h / 2, w / 2)."""

    def __init__(self, cin: int, cout: int, hw: tuple[int, int], fold_time: bool):
        super().__init__()
        self.fold = 2 if fold_time else 1
        self.conv = CausalConv3d(self.fold * cin, cout, 1, hw, stride=2)

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        B, T, C, h, w = x.shape
        return self.conv(x.view(B, T // self.fold, self.fold * C, h, w), state)


def space_to_depth(x: Tensor, f: int) -> Tensor:
    """(..., C, h, w) -> (..., C f^2, h / f, w / f): channel c f^2 + i f + j holds pixel
    (f y + i, f x + j) of channel c (the order of F.pixel_unshuffle, computed faster)."""
    *lead, C, h, w = x.shape
    x = x.reshape(-1, C, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(*lead, C * f * f, h // f, w // f)


def depth_to_space(x: Tensor, f: int) -> Tensor:
    """The inverse of space_to_depth: (..., C f^2, h, w) -> (..., C, f h, f w)."""
    *lead, Cff, h, w = x.shape
    C = Cff // (f * f)
    x = x.reshape(-1, C, f, f, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(*lead, C, h * f, w * f)


class Up3d(nn.Module):
    """Sub-pixel conv: double space and, with `unfold_time`, double time by unfolding channels
    into frames 2t and 2t+1 (the inverse of Down3d's fold):
    (B, T, Cin, h, w) -> (B, T * f, Cout, 2h, 2w)."""

    def __init__(self, cin: int, cout: int, hw: tuple[int, int], unfold_time: bool):
        super().__init__()
        self.unfold = 2 if unfold_time else 1
        self.conv = CausalConv3d(cin, self.unfold * cout * 4, 1, hw)

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        B, T = x.shape[:2]
        y = depth_to_space(self.conv(x, state), 2)  # (B, T, f Cout, 2h, 2w)
        _, _, fC, h2, w2 = y.shape
        return y.view(B, T * self.unfold, fC // self.unfold, h2, w2)


class Up1d(nn.Module):
    """Sub-pixel causal conv: (B, Cin, L) -> (B, Cout, L * s); channel c * s + j of the conv
    becomes sample l * s + j of channel c, so each call yields exactly s samples a step."""

    def __init__(self, cin: int, cout: int, s: int, k: int = 3):
        super().__init__()
        self.s = s
        self.conv = CausalConv1d(cin, cout * s, k)

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        y = self.conv(x, state)
        B, Cs, L = y.shape
        return y.view(B, Cs // self.s, self.s, L).transpose(2, 3).reshape(B, Cs // self.s, L * self.s)


class StreamingNet(nn.Module):
    """A chain of layers `forward(x, state)` whose left context lives in one ConvState.

    Subclasses fill `self.layers`, then call `number_layers()` to give each streaming conv its
    buffer slot; `init_state` allocates the buffers (zeros: silence before the clip).
    """
    layers: nn.ModuleList  # run in order, each as layer(x, state)
    streaming: list[CausalConv]  # the layers with left context, in slot order

    def number_layers(self) -> None:
        self.streaming = [m for m in self.modules()
                          if isinstance(m, (CausalConv3d, CausalConv1d)) and m.context]
        for i, m in enumerate(self.streaming):
            m.slot = i

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> ConvState:
        return ConvState([torch.zeros(batch, *m.buffer_shape, device=device, dtype=dtype)
                          for m in self.streaming])

    def run(self, x: Tensor, state: ConvState | None) -> Tensor:
        """The layers on x, continuing from `state` (updated in place), or from silence."""
        B = x.shape[0]
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        elif len(state.buffers) != len(self.streaming) or (
                state.buffers and state.buffers[0].shape[0] != B):
            found = (len(state.buffers), state.buffers[0].shape[0] if state.buffers else None)
            raise ValueError(f"{type(self).__name__}: state has {found[0]} buffers of batch "
                             f"{found[1]}, expected {len(self.streaming)} of batch {B}; make it "
                             f"with this network's init_state(batch={B})")
        for layer in self.layers:
            x = layer(x, state)
        return x
