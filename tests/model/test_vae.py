"""The causal AV VAE: streaming == whole clip, causality, shapes of every preset, and one
module serving many sessions (the state lives with the caller, never on the module).
Pure PyTorch on CPU with the tiny preset (the `cfg` fixture): no processes, no sockets, no clocks.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from model.config import PRESETS, ModelConfig
from model.vae import AVVAE, VideoDecoder, VideoEncoder

TOL = 1e-5  # fp32, streaming vs whole clip


@pytest.fixture
def vae(cfg: ModelConfig) -> AVVAE:
    torch.manual_seed(0)
    return AVVAE(cfg.video, cfg.audio).eval()


def media(cfg: ModelConfig, units: int, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(batch, 4 * units, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1
    audio = torch.rand(batch, units * cfg.audio.samples_per_unit, generator=g) * 2 - 1
    return frames, audio


def latents(cfg: ModelConfig, units: int, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.video.latent_hw
    return (torch.randn(batch, units, cfg.video.vae_channels, h, w, generator=g),
            torch.randn(batch, 4 * units, cfg.audio.vae_channels, generator=g))


def split_units(chunks: list[int], frames_per_unit: int, audio_per_unit: int,
                video: Tensor, audio: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Cut a clip into consecutive calls of `chunks` units each."""
    return list(zip(video.split([c * frames_per_unit for c in chunks], 1),
                    audio.split([c * audio_per_unit for c in chunks], 1)))


def max_diff(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


GEOMETRIES = [pytest.param([1] * 5, 1, id="units=5,chunk=1,batch=1"),
              pytest.param([1] * 6, 2, id="units=6,chunk=1,batch=2"),
              pytest.param([2, 1, 3], 1, id="units=6,chunks=2+1+3")]


@pytest.mark.parametrize("chunks,batch", GEOMETRIES)
@torch.no_grad()
def test_streaming_encode_equals_whole_clip(vae: AVVAE, cfg: ModelConfig, chunks: list[int],
                                            batch: int) -> None:
    frames, audio = media(cfg, sum(chunks), batch, seed=1)
    whole = vae.encode(frames, audio)
    state = vae.init_encode_state(batch, "cpu", torch.float32)
    parts = [vae.encode(f, a, state)
             for f, a in split_units(chunks, 4, cfg.audio.samples_per_unit, frames, audio)]
    streamed = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
    assert max_diff(streamed, whole) <= TOL
    assert min(x.std().item() for x in whole) > 0.05  # the outputs carry signal: not a vacuous match


@pytest.mark.parametrize("chunks,batch", GEOMETRIES)
@torch.no_grad()
def test_streaming_decode_equals_whole_clip(vae: AVVAE, cfg: ModelConfig, chunks: list[int],
                                            batch: int) -> None:
    zv, za = latents(cfg, sum(chunks), batch, seed=2)
    whole = vae.decode(zv, za)
    state = vae.init_decode_state(batch, "cpu", torch.float32)
    parts = [vae.decode(v, a, state) for v, a in split_units(chunks, 1, 4, zv, za)]
    streamed = (torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1))
    assert max_diff(streamed, whole) <= TOL
    assert min(x.std().item() for x in whole) > 0.05


@pytest.mark.parametrize("spatial", [pytest.param(s, id=f"spatial={s}") for s in (8, 16, 32)])
@torch.no_grad()
def test_video_streams_exactly_at_every_spatial_compression(spatial: int) -> None:
    torch.manual_seed(0)
    H, W, units = 32, 64, 5
    encoder, decoder = VideoEncoder(H, W, spatial, 4, 3), VideoDecoder(H, W, spatial, 4, 3)
    frames = torch.rand(1, 4 * units, 3, H, W) * 2 - 1
    z = encoder(frames)
    enc_state, dec_state = encoder.init_state(1), decoder.init_state(1)
    z_streamed = torch.cat([encoder(f, enc_state) for f in frames.split(4, 1)], 1)
    out_streamed = torch.cat([decoder(u, dec_state) for u in z.split(1, 1)], 1)
    assert z.shape == (1, units, 3, H // spatial, W // spatial)
    assert max_diff((z_streamed, out_streamed), (z, decoder(z))) <= TOL


@pytest.mark.parametrize("units,more", [pytest.param(1, 4, id="units=1+4"),
                                        pytest.param(3, 2, id="units=3+2")])
@torch.no_grad()
def test_appending_units_never_changes_earlier_latents(vae: AVVAE, cfg: ModelConfig, units: int,
                                                       more: int) -> None:
    frames, audio = media(cfg, units + more, 1, seed=3)
    spu = cfg.audio.samples_per_unit
    short = vae.encode(frames[:, :4 * units], audio[:, :units * spu])
    long = vae.encode(frames, audio)
    assert max_diff(short, (long[0][:, :units], long[1][:, :4 * units])) <= TOL


@pytest.mark.parametrize("units,more", [pytest.param(1, 4, id="units=1+4"),
                                        pytest.param(3, 2, id="units=3+2")])
@torch.no_grad()
def test_appending_units_never_changes_earlier_media(vae: AVVAE, cfg: ModelConfig, units: int,
                                                     more: int) -> None:
    zv, za = latents(cfg, units + more, 1, seed=4)
    short = vae.decode(zv[:, :units], za[:, :4 * units])
    long = vae.decode(zv, za)
    spu = cfg.audio.samples_per_unit
    assert max_diff(short, (long[0][:, :4 * units], long[1][:, :units * spu])) <= TOL


@torch.no_grad()
def test_two_interleaved_sessions_equal_each_run_alone(vae: AVVAE, cfg: ModelConfig) -> None:
    clips = [latents(cfg, 4, 1, seed=10 + i) for i in range(2)]
    alone = [vae.decode(*clip, vae.init_decode_state(1)) for clip in clips]
    states = [vae.init_decode_state(1) for _ in clips]
    outs: list[list[tuple[Tensor, Tensor]]] = [[], []]
    for n in range(4):
        for i, (zv, za) in enumerate(clips):
            outs[i].append(vae.decode(zv[:, n:n + 1], za[:, 4 * n:4 * n + 4], states[i]))
    for i in range(2):
        streamed = (torch.cat([o[0] for o in outs[i]], 1), torch.cat([o[1] for o in outs[i]], 1))
        assert max_diff(streamed, alone[i]) <= TOL
    assert not [name for name, b in vae.named_buffers()]  # nothing of a session on the module


@torch.no_grad()
def test_reset_state_starts_a_new_clip(vae: AVVAE, cfg: ModelConfig) -> None:
    frames, audio = media(cfg, 2, 1, seed=5)
    state = vae.init_encode_state(1)
    first = vae.encode(frames[:, :4], audio[:, :cfg.audio.samples_per_unit], state)
    vae.encode(frames[:, 4:], audio[:, cfg.audio.samples_per_unit:], state)
    state.reset()
    again = vae.encode(frames[:, :4], audio[:, :cfg.audio.samples_per_unit], state)
    assert max_diff(first, again) == 0.0


@torch.no_grad()
def test_branches_encode_alone_as_in_the_joint_call(vae: AVVAE, cfg: ModelConfig) -> None:
    frames, audio = media(cfg, 2, 1, seed=6)
    zv, za = vae.encode(frames, audio)
    assert torch.equal(vae.encode_video(frames), zv)
    assert torch.equal(vae.encode_audio(audio), za)
    v, a = vae.decode(zv, za)
    assert torch.equal(vae.decode_video(zv), v) and torch.equal(vae.decode_audio(za), a)


@torch.no_grad()
def test_encode_image_is_a_one_unit_clip_of_the_image(vae: AVVAE, cfg: ModelConfig) -> None:
    image = media(cfg, 1, 2, seed=7)[0][:, 0]  # (B, 3, H, W)
    clip = image[:, None].repeat(1, 4, 1, 1, 1)
    assert torch.equal(vae.encode_image(image), vae.encode_video(clip)[:, 0])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_of_every_preset(name: str) -> None:
    cfg = PRESETS[name]()
    v, a = cfg.video, cfg.audio
    with torch.device("meta"):
        vae = AVVAE(v, a)
        B, N = 2, 2
        zv, za = vae.encode(torch.empty(B, 4 * N, 3, v.height, v.width),
                            torch.empty(B, N * a.samples_per_unit), vae.init_encode_state(B))
        frames, audio = vae.decode(zv, za, vae.init_decode_state(B))
        image = vae.encode_image(torch.empty(B, 3, v.height, v.width))
        voice = vae.encode_audio(torch.empty(B, 3 * a.samples_per_unit))
    h, w = v.latent_hw
    assert zv.shape == (B, N, v.vae_channels, h, w)
    assert za.shape == (B, 4 * N, a.vae_channels)
    assert frames.shape == (B, 4 * N, 3, v.height, v.width)
    assert audio.shape == (B, N * a.samples_per_unit)
    assert image.shape == (B, v.vae_channels, h, w) and voice.shape == (B, 12, a.vae_channels)
    params = sum(p.numel() for p in vae.parameters())
    assert 1e5 < params < 3e8, f"{name}: {params / 1e6:.1f} M parameters"


def test_mismatched_video_and_audio_are_refused(vae: AVVAE, cfg: ModelConfig) -> None:
    frames, audio = media(cfg, 2, 1, seed=8)
    with pytest.raises(ValueError, match="different spans"):
        vae.encode(frames, audio[:, :cfg.audio.samples_per_unit])
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode_video(frames[:, :3])
