"""The causal encoder of the user's audio + video: streaming == whole clip, causality, token
shapes and order for every preset, and one module serving many sessions.
Pure PyTorch on CPU with the tiny preset (the `cfg` fixture): no processes, no sockets, no clocks.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from model.av_encoder import AVEncoder
from model.config import PRESETS, ModelConfig

TOL = 1e-5  # fp32, streaming vs whole clip


@pytest.fixture
def encoder(cfg: ModelConfig) -> AVEncoder:
    torch.manual_seed(0)
    return AVEncoder(cfg).eval()


def media(cfg: ModelConfig, units: int, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(batch, 4 * units, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1
    audio = torch.rand(batch, units * cfg.audio.samples_per_unit, generator=g) * 2 - 1
    return frames, audio


def max_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("chunks,batch", [pytest.param([1] * 5, 1, id="units=5,chunk=1,batch=1"),
                                          pytest.param([1] * 5, 2, id="units=5,chunk=1,batch=2"),
                                          pytest.param([3, 2], 1, id="units=5,chunks=3+2")])
@torch.no_grad()
def test_streaming_encoder_equals_whole_clip(encoder: AVEncoder, cfg: ModelConfig,
                                             chunks: list[int], batch: int) -> None:
    frames, audio = media(cfg, sum(chunks), batch, seed=1)
    whole = encoder(frames, audio)
    state = encoder.init_state(batch, "cpu", torch.float32)
    spu = cfg.audio.samples_per_unit
    parts = [encoder(f, a, state) for f, a in zip(frames.split([4 * c for c in chunks], 1),
                                                   audio.split([spu * c for c in chunks], 1))]
    streamed = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
    assert max_diff(streamed, whole) <= TOL
    assert min(x.std().item() for x in whole) > 0.05  # the tokens carry signal: not a vacuous match


@pytest.mark.parametrize("units,more", [pytest.param(1, 4, id="units=1+4"),
                                        pytest.param(3, 2, id="units=3+2")])
@torch.no_grad()
def test_appending_units_never_changes_earlier_tokens(encoder: AVEncoder, cfg: ModelConfig,
                                                      units: int, more: int) -> None:
    frames, audio = media(cfg, units + more, 1, seed=2)
    spu = cfg.audio.samples_per_unit
    short = encoder(frames[:, :4 * units], audio[:, :units * spu])
    long = encoder(frames, audio)
    assert max_diff(short, (long[0][:, :units], long[1][:, :4 * units])) <= TOL


@torch.no_grad()
def test_later_media_never_reaches_earlier_tokens(encoder: AVEncoder, cfg: ModelConfig) -> None:
    """Changing only the last unit's frames and audio leaves every earlier token as it was."""
    frames, audio = media(cfg, 3, 1, seed=3)
    spu = cfg.audio.samples_per_unit
    frames2, audio2 = frames.clone(), audio.clone()
    frames2[:, 8:] = -frames2[:, 8:]
    audio2[:, 2 * spu:] = 0.0
    a, b = encoder(frames, audio), encoder(frames2, audio2)
    assert max_diff((a[0][:, :2], a[1][:, :8]), (b[0][:, :2], b[1][:, :8])) <= TOL
    assert max_diff((a[0][:, 2:], a[1][:, 8:]), (b[0][:, 2:], b[1][:, 8:])) > 1e-3


@torch.no_grad()
def test_two_interleaved_sessions_equal_each_run_alone(encoder: AVEncoder, cfg: ModelConfig) -> None:
    clips = [media(cfg, 3, 1, seed=10 + i) for i in range(2)]
    alone = [encoder(*clip, encoder.init_state(1)) for clip in clips]
    states = [encoder.init_state(1) for _ in clips]
    spu = cfg.audio.samples_per_unit
    outs: list[list[tuple[Tensor, Tensor]]] = [[], []]
    for n in range(3):
        for i, (frames, audio) in enumerate(clips):
            outs[i].append(encoder(frames[:, 4 * n:4 * n + 4], audio[:, n * spu:(n + 1) * spu], states[i]))
    for i in range(2):
        streamed = (torch.cat([o[0] for o in outs[i]], 1), torch.cat([o[1] for o in outs[i]], 1))
        assert max_diff(streamed, alone[i]) <= TOL
    assert not list(encoder.named_buffers())  # nothing of a session on the module


@torch.no_grad()
def test_video_tokens_are_the_obs_grid_row_major(encoder: AVEncoder, cfg: ModelConfig) -> None:
    frames, audio = media(cfg, 1, 1, seed=4)
    tokens, _ = encoder(frames, audio)
    grid = encoder.video(frames)  # (B, N, obs_dim, gh, gw)
    gh, gw = cfg.video.obs_grid
    for r in range(gh):
        for c in range(gw):
            assert torch.equal(tokens[:, :, r * gw + c], grid[:, :, :, r, c])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_token_shapes_of_every_preset_match_the_unit_layout(name: str) -> None:
    cfg = PRESETS[name]()
    lay = cfg.layout
    with torch.device("meta"):
        encoder = AVEncoder(cfg)
        B, N = 2, 2
        video, audio = encoder(torch.empty(B, 4 * N, 3, cfg.video.height, cfg.video.width),
                               torch.empty(B, N * cfg.audio.samples_per_unit), encoder.init_state(B))
    assert video.shape == (B, N, lay.obs_video, cfg.obs_dim)
    assert audio.shape == (B, N * lay.obs_audio, cfg.obs_dim)
    params = sum(p.numel() for p in encoder.parameters())
    assert 1e4 < params < 2e8, f"{name}: {params / 1e6:.1f} M parameters"


def test_mismatched_video_and_audio_are_refused(encoder: AVEncoder, cfg: ModelConfig) -> None:
    frames, audio = media(cfg, 2, 1, seed=5)
    with pytest.raises(ValueError, match="different spans"):
        encoder(frames, audio[:, :cfg.audio.samples_per_unit])
