"""The STFT-domain audio path (model/istft.py): the two claims of every streaming component,
causality (a longer input never changes earlier outputs) and chunked == whole clip, for the
encoder and the iSTFT decoder at 16 and 24 kHz; and the config that selects it.
Pure PyTorch on CPU, small widths: no processes, no sockets, no clocks.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from model.config import PRESETS, AudioConfig, preset
from model.istft import ISTFTDecoder, STFTEncoder
from model.vae import AVVAE, AudioDecoder, AudioEncoder

TOL = 1e-5  # fp32, streaming vs whole clip

RATES = {16_000: (4, 4, 4, 10), 24_000: (4, 4, 6, 10)}


def audio_config(rate: int, window_hops: int = 4) -> AudioConfig:
    return AudioConfig(sample_rate=rate, strides=RATES[rate], vae_channels=4, vae_width=16,
                       obs_width=8, encoder="stft", decoder="istft", stft_window_hops=window_hops)


CONFIGS = [pytest.param(16_000, 4, id="16kHz,window=4hops"),
           pytest.param(24_000, 4, id="24kHz,window=4hops"),
           pytest.param(16_000, 2, id="16kHz,window=2hops")]
CHUNKS = [pytest.param([1] * 5, 1, id="units=5,chunk=1,batch=1"),
          pytest.param([2, 1, 3], 2, id="units=6,chunks=2+1+3,batch=2")]


def nets(rate: int, window_hops: int) -> tuple[AudioConfig, STFTEncoder, ISTFTDecoder]:
    a = audio_config(rate, window_hops)
    torch.manual_seed(0)
    return a, STFTEncoder(a, a.vae_channels).eval(), ISTFTDecoder(a, a.vae_channels).eval()


def speechlike(batch: int, samples: int, rate: int, seed: int) -> Tensor:
    """A gliding harmonic tone in noise: signal in every STFT bin the encoder sees."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate
    f0 = 120 + 40 * torch.sin(2 * torch.pi * 1.5 * t)
    phase = 2 * torch.pi * torch.cumsum(f0, 0) / rate
    tone = sum(torch.sin(k * phase) / k for k in range(1, 8))
    return 0.3 * tone + 0.05 * torch.randn(batch, samples, generator=g)


@pytest.mark.parametrize("rate,window_hops", CONFIGS)
@pytest.mark.parametrize("chunks,batch", CHUNKS)
@torch.no_grad()
def test_streaming_encode_equals_whole_clip(rate: int, window_hops: int, chunks: list[int],
                                            batch: int) -> None:
    a, enc, _ = nets(rate, window_hops)
    x = speechlike(batch, sum(chunks) * a.samples_per_unit, rate, seed=1)
    whole = enc(x)
    state = enc.init_state(batch)
    streamed = torch.cat([enc(u, state) for u in x.split([c * a.samples_per_unit for c in chunks], 1)], 1)
    assert whole.shape == (batch, 4 * sum(chunks), a.vae_channels)
    assert (streamed - whole).abs().max().item() <= TOL
    assert whole.std().item() > 0.05  # carries signal: not a vacuous match


@pytest.mark.parametrize("rate,window_hops", CONFIGS)
@pytest.mark.parametrize("chunks,batch", CHUNKS)
@torch.no_grad()
def test_streaming_decode_equals_whole_clip(rate: int, window_hops: int, chunks: list[int],
                                            batch: int) -> None:
    a, _, dec = nets(rate, window_hops)
    z = torch.randn(batch, 4 * sum(chunks), a.vae_channels, generator=torch.Generator().manual_seed(2))
    whole = dec(z)
    state = dec.init_state(batch)
    streamed = torch.cat([dec(u, state) for u in z.split([4 * c for c in chunks], 1)], 1)
    assert whole.shape == (batch, sum(chunks) * a.samples_per_unit)
    assert (streamed - whole).abs().max().item() <= TOL
    assert whole.std().item() > 1e-3


@pytest.mark.parametrize("rate,window_hops", CONFIGS)
@pytest.mark.parametrize("units,more", [pytest.param(1, 4, id="units=1+4"), pytest.param(3, 2, id="units=3+2")])
@torch.no_grad()
def test_appending_units_never_changes_earlier_outputs(rate: int, window_hops: int, units: int,
                                                       more: int) -> None:
    a, enc, dec = nets(rate, window_hops)
    spu = a.samples_per_unit
    x = speechlike(1, (units + more) * spu, rate, seed=3)
    assert (enc(x[:, :units * spu]) - enc(x)[:, :4 * units]).abs().max().item() <= TOL
    z = torch.randn(1, 4 * (units + more), a.vae_channels, generator=torch.Generator().manual_seed(4))
    assert (dec(z[:, :4 * units]) - dec(z)[:, :units * spu]).abs().max().item() <= TOL


@torch.no_grad()
def test_a_change_in_a_latent_never_reaches_earlier_samples() -> None:
    """The overlap-add lays each frame after its hop: perturbing latent n moves nothing
    before latent n's first sample, and something after it (the decoder is not blind)."""
    a, _, dec = nets(16_000, 4)
    z = torch.randn(1, 12, a.vae_channels, generator=torch.Generator().manual_seed(5))
    n, hop = 6, a.samples_per_latent
    z2 = z.clone()
    z2[:, n] += 1.0
    y, y2 = dec(z), dec(z2)
    assert (y[:, :n * hop] - y2[:, :n * hop]).abs().max().item() == 0.0
    assert (y[:, n * hop:] - y2[:, n * hop:]).abs().max().item() > 1e-4


@torch.no_grad()
def test_two_interleaved_sessions_equal_each_run_alone() -> None:
    a, enc, dec = nets(16_000, 4)
    clips = [speechlike(1, 3 * a.samples_per_unit, 16_000, seed=10 + i) for i in range(2)]
    alone = [dec(enc(x)) for x in clips]
    states = [(enc.init_state(1), dec.init_state(1)) for _ in clips]
    outs: list[list[Tensor]] = [[], []]
    for n in range(3):
        for i, x in enumerate(clips):
            u = x[:, n * a.samples_per_unit:(n + 1) * a.samples_per_unit]
            outs[i].append(dec(enc(u, states[i][0]), states[i][1]))
    for i in range(2):
        assert (torch.cat(outs[i], 1) - alone[i]).abs().max().item() <= TOL
    assert not list(enc.named_buffers()) and not list(dec.named_buffers())


def test_the_config_selects_the_audio_path() -> None:
    v = preset("tiny").video
    stft = AVVAE(v, audio_config(16_000))
    assert isinstance(stft.audio_encoder, STFTEncoder) and isinstance(stft.audio_decoder, ISTFTDecoder)
    for name in sorted(set(PRESETS) - {"demo"}):  # the other presets keep the conv path
        with torch.device("meta"):
            vae = AVVAE(PRESETS[name]().video, PRESETS[name]().audio)
        assert isinstance(vae.audio_encoder, AudioEncoder) and isinstance(vae.audio_decoder, AudioDecoder)
    demo = preset("demo").audio
    assert (demo.sample_rate, demo.stft_hop, demo.n_fft, demo.encoder, demo.decoder) == (24_000, 240, 960, "stft", "istft")


def test_a_hop_that_does_not_divide_the_latent_is_refused() -> None:
    with pytest.raises(ValueError, match="stft_hops_per_latent"):
        AudioConfig(sample_rate=16_000, strides=RATES[16_000], vae_channels=4, vae_width=8,
                    obs_width=8, stft_hops_per_latent=7)
