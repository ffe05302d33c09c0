"""The streaming conv blocks against their slow twins: the stacked-frames 2-D conv against
conv3d with left padding, the strided causal 1-D conv against conv1d with left padding, the
fast space/depth shuffles against PyTorch's; and chunked == whole for each streaming block.
Pure PyTorch on CPU: no processes, no sockets, no clocks.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.causal_conv import (CausalConv1d, CausalConv3d, ChannelRMSNorm, ConvState, Down3d,
                               StreamingNet, Up1d, Up3d, depth_to_space, res_block_1d,
                               res_block_3d, space_to_depth)

TOL = 1e-5


class Chain(StreamingNet):
    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, x: Tensor, state: ConvState | None = None) -> Tensor:
        return self.run(x, state)


def streamed(net: Chain, x: Tensor, chunks: list[int], dim: int) -> Tensor:
    state = net.init_state(x.shape[0])
    return torch.cat([net(part, state) for part in x.split(chunks, dim)], dim)


@pytest.mark.parametrize("kt,k,stride", [pytest.param(3, 3, 1, id="kt=3,k=3"),
                                         pytest.param(2, 1, 1, id="kt=2,k=1"),
                                         pytest.param(1, 3, 2, id="kt=1,k=3,stride=2")])
def test_stacked_conv_equals_conv3d_with_left_padding(kt: int, k: int, stride: int) -> None:
    torch.manual_seed(0)
    B, T, Cin, Cout, H, W = 2, 5, 3, 4, 6, 8
    net = Chain(CausalConv3d(Cin, Cout, kt, (H, W), k, stride))
    x = torch.randn(B, T, Cin, H, W)
    w = net.layers[0].conv.weight.view(Cout, kt, Cin, k, k).transpose(1, 2)  # (Cout, Cin, kt, k, k)
    xp = F.pad(x.transpose(1, 2), (0, 0, 0, 0, kt - 1, 0))  # (B, Cin, kt - 1 + T, H, W)
    ref = F.conv3d(xp, w, net.layers[0].conv.bias, (1, stride, stride), (0, k // 2, k // 2))
    assert (net(x) - ref.transpose(1, 2)).abs().max() <= TOL


@pytest.mark.parametrize("k,stride,dilation", [pytest.param(7, 1, 1, id="k=7"),
                                               pytest.param(3, 1, 3, id="k=3,dilation=3"),
                                               pytest.param(8, 4, 1, id="k=8,stride=4")])
def test_causal_conv1d_equals_conv1d_with_left_padding(k: int, stride: int, dilation: int) -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(3, 5, k, stride, dilation)
    net = Chain(conv)
    x = torch.randn(2, 3, 48)
    ref = F.conv1d(F.pad(x, (conv.context, 0)), conv.conv.weight, conv.conv.bias, stride, 0, dilation)
    assert (net(x) - ref).abs().max() <= TOL


def test_space_depth_shuffles_equal_pytorch_pixel_shuffles() -> None:
    x = torch.randn(2, 3, 5, 8, 12)
    assert torch.equal(space_to_depth(x, 2), F.pixel_unshuffle(x.flatten(0, 1), 2).unflatten(0, (2, 3)))
    y = torch.randn(2, 3, 20, 4, 6)
    assert torch.equal(depth_to_space(y, 2), F.pixel_shuffle(y.flatten(0, 1), 2).unflatten(0, (2, 3)))
    assert torch.equal(depth_to_space(space_to_depth(x, 2), 2), x)


@pytest.mark.parametrize("chunks", [pytest.param([1, 1, 1, 1, 1, 1], id="T=6,chunk=1"),
                                    pytest.param([2, 3, 1], id="T=6,chunks=2+3+1")])
def test_streamed_video_blocks_equal_whole_clip(chunks: list[int]) -> None:
    torch.manual_seed(0)
    hw = (8, 12)
    net = Chain(CausalConv3d(3, 8, 3, hw), res_block_3d(8, hw, 3), Down3d(8, 16, hw, fold_time=False),
                Up3d(16, 8, (4, 6), unfold_time=False), res_block_3d(8, hw, 2))
    x = torch.randn(2, sum(chunks), 3, *hw)
    assert (streamed(net, x, chunks, 1) - net(x)).abs().max() <= TOL


def test_time_fold_and_unfold_are_inverse_pairings_of_frames() -> None:
    """Down3d folds frames (2t, 2t+1) into one step; Up3d unfolds one step into (2t, 2t+1)."""
    hw = (4, 4)
    down, up = Down3d(2, 2, hw, fold_time=True), Up3d(2, 2, (2, 2), unfold_time=True)
    x = torch.randn(1, 4, 2, *hw)
    x2 = x.clone()
    x2[:, 3] += 1.0  # only the second pair changes
    state = ConvState([])
    assert torch.equal(down(x, state)[:, 0], down(x2, state)[:, 0])
    z = torch.randn(1, 2, 2, 2, 2)
    z2 = z.clone()
    z2[:, 1] += 1.0
    assert torch.equal(up(z, state)[:, :2], up(z2, state)[:, :2])


@pytest.mark.parametrize("chunks", [pytest.param([60] * 4, id="L=240,chunk=60"),
                                    pytest.param([120, 60, 60], id="L=240,chunks=120+60+60")])
def test_streamed_audio_blocks_equal_whole_clip(chunks: list[int]) -> None:
    torch.manual_seed(0)
    net = Chain(CausalConv1d(1, 8, 7), res_block_1d(8, 7, 3), CausalConv1d(8, 16, 12, 6),
                Up1d(16, 8, 6), res_block_1d(8, 3, 1))
    x = torch.randn(2, 1, sum(chunks))
    assert (streamed(net, x, chunks, 2) - net(x)).abs().max() <= TOL


def test_norm_never_mixes_time() -> None:
    norm = ChannelRMSNorm(4, channel_dim=-3)
    x = torch.randn(1, 3, 4, 5, 5)
    x2 = x.clone()
    x2[:, 2] *= 10.0
    assert torch.equal(norm(x)[:, :2], norm(x2)[:, :2])


def test_reset_returns_the_state_to_silence() -> None:
    torch.manual_seed(0)
    net = Chain(CausalConv1d(1, 4, 5), res_block_1d(4, 3, 2))
    x = torch.randn(1, 1, 32)
    state = net.init_state(1)
    first = net(x, state)
    net(torch.randn(1, 1, 32), state)
    state.reset()
    assert all(not b.any() for b in state.buffers)
    assert torch.equal(net(x, state), first)


def test_state_of_another_shape_is_refused_with_the_fix() -> None:
    net = Chain(CausalConv1d(1, 4, 5))
    with pytest.raises(ValueError, match=r"init_state\(batch=2\)"):
        net(torch.randn(2, 1, 16), net.init_state(1))
