"""The STFT-domain audio path of the VAE: a causal STFT encoder and an inverse-STFT decoder
(AudioConfig.encoder = "stft", decoder = "istft"), in the manner of Vocos.

Time runs at three rates: samples; STFT hops (`hop` = samples per latent / hops_per_latent;
window n_fft = window_hops * hop, a periodic Hann); latents (25 Hz, 4 a unit).

Encoder: frame t is the window that ENDS at the end of hop t (the last n_fft - hop samples
come from the state), so it never sees the future; its log-magnitudes go through causal
convs at the hop rate, a strided causal conv to the latent rate, and causal convs there.
Decoder: causal convs at the latent rate, a sub-pixel conv up to the hop rate, causal convs
there, then per hop a log-magnitude and a phase step for each bin. A bin's phase is its
phase one hop earlier, advanced by its centre frequency over a hop, plus the predicted step
(the phase vocoder's rule): an untrained decoder already makes frames whose overlaps add up
instead of cancelling, and the loss fell faster than with absolute phases (2.5 against 3.8
after 350 steps). The inverse FFT of frame t (windowed) is laid at samples
[t hop, t hop + n_fft): hop t's samples are final once frame t
is known, and the frame's tail (n_fft - hop samples) is carried in the state and added to
the next hops (a streaming overlap-add). So output hop t depends on latents up to t's only,
and unit-by-unit decoding equals the whole clip (the last phases are carried too).

Both are StreamingNets: their left context lives in a ConvState the caller owns.
Pure PyTorch: no processes, no sockets, no clocks; no module holds a session's state.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.causal_conv import (ConvState, CausalConv1d, PreAct, StreamingNet, Up1d,
                               res_block_1d, stage_widths)
from model.config import AudioConfig

LOG_FLOOR = 1e-5  # magnitude floor of the encoder's log spectrum
LOG_SHIFT, LOG_SCALE = 4.0, 4.0  # (log|X| + shift) / scale: the encoder's input, about unit scale
MAX_LOG_MAG = 8.0  # the decoder's log-magnitudes are clamped here (exp(8) ~ 3000; full scale is ~ 400)


def _window(n_fft: int, like: Tensor) -> Tensor:
    return torch.hann_window(n_fft, periodic=True, device=like.device, dtype=like.dtype)


class CausalSTFT(nn.Module):
    """(B, 1, L) samples -> (B, n_fft / 2 + 1, L / hop) scaled log-magnitudes; frame t is
    the window ending at sample (t + 1) hop, its first n_fft - hop samples from the state."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.context = n_fft - hop
        self.buffer_shape = (1, self.context)
        self.slot: int | None = None

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        buf = state.buffers[self.slot]
        x = torch.cat([buf, x], dim=-1)  # (B, 1, context + L)
        buf.copy_(x[..., x.shape[-1] - self.context:].detach())
        frames = x[:, 0].unfold(-1, self.n_fft, self.hop) * _window(self.n_fft, x)  # (B, T, n_fft)
        mag = torch.fft.rfft(frames.float(), dim=-1).abs()  # (B, T, F)
        return ((mag.clamp_min(LOG_FLOOR).log() + LOG_SHIFT) / LOG_SCALE).to(x.dtype).transpose(1, 2)


class OverlapAdd(nn.Module):
    """(B, 2F, T) log-magnitudes and phase steps per hop -> (B, T hop) samples: inverse FFT,
    synthesis window, and overlap-add, the unfinished tail of the last frames in the state."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.context = n_fft - hop
        self.buffer_shape = (self.context + n_fft // 2 + 1,)  # the overlap-add tail, then the phases
        self.slot: int | None = None
        # the sum of the squared windows over the frames covering a sample (constant past the
        # clip's first frames when the window is at least 2 hops): plain Python, so building
        # the module on the meta device works
        self.envelope = sum((0.5 - 0.5 * math.cos(2 * math.pi * i / n_fft)) ** 2 for i in range(n_fft)) / hop

    def forward(self, x: Tensor, state: ConvState) -> Tensor:
        B, F2, T = x.shape
        F, K, hop = F2 // 2, self.n_fft // self.hop, self.hop
        log_mag, step = x.float().transpose(1, 2).split(F, dim=-1)  # (B, T, F) each
        buf = state.buffers[self.slot]
        # phase of bin k at hop t = its phase at hop t - 1 + the advance of the bin's centre
        # frequency over one hop + the predicted deviation (summed in float64 so that any
        # chunking of the stream gives the same phases)
        advance = torch.arange(F, device=x.device, dtype=torch.float64) * (2 * math.pi * hop / self.n_fft)
        phase = buf[:, None, self.context:].double() + torch.cumsum(step.double() + advance, 1)
        phase = torch.remainder(phase, 2 * math.pi)
        buf[:, self.context:].copy_(phase[:, -1].detach())
        spec = torch.polar(log_mag.clamp(max=MAX_LOG_MAG).exp(), phase.float())
        frames = torch.fft.irfft(spec, n=self.n_fft, dim=-1) * _window(self.n_fft, log_mag)  # (B, T, n_fft)
        pieces = frames.view(B, T, K, hop)
        out = frames.new_zeros(B, (T + K - 1) * hop)
        for j in range(K):  # piece j of frame t lands on hop t + j
            out[:, j * hop:(j + T) * hop] += pieces[:, :, j].reshape(B, T * hop)
        out[:, :self.context] += buf[:, :self.context].float()
        buf[:, :self.context].copy_(out[:, T * hop:].detach())
        return (out[:, :T * hop] / self.envelope).to(x.dtype)


class _STFTNet(StreamingNet):
    def number_layers(self) -> None:
        self.streaming = [m for m in self.modules()
                          if isinstance(m, (CausalConv1d, CausalSTFT, OverlapAdd)) and m.context]
        for i, m in enumerate(self.streaming):
            m.slot = i


class STFTEncoder(_STFTNet):
    """Audio (B, L), L a multiple of samples per latent -> latents (B, L / latent_hop, out).
    Hop rate at width `vae_width`, latent rate at twice that (capped)."""

    def __init__(self, a: AudioConfig, out_channels: int):
        super().__init__()
        w_hop, w_lat = stage_widths(a.vae_width, 2)
        k = a.stft_hops_per_latent
        self.latent_hop = a.samples_per_latent
        layers: list[nn.Module] = [
            CausalSTFT(a.n_fft, a.stft_hop), CausalConv1d(a.n_fft // 2 + 1, w_hop, 3),
            res_block_1d(w_hop, 7, 1), res_block_1d(w_hop, 7, 3),
            PreAct(CausalConv1d(w_hop, w_lat, 2 * k, k)),
            res_block_1d(w_lat, 3, 1), res_block_1d(w_lat, 3, 2),
            PreAct(CausalConv1d(w_lat, out_channels, 3))]
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, audio: Tensor, state: ConvState | None = None) -> Tensor:
        if audio.dim() != 2 or audio.shape[1] % self.latent_hop:
            raise ValueError(f"audio must be (B, L) with L a multiple of {self.latent_hop}, "
                             f"got {tuple(audio.shape)}")
        return self.run(audio[:, None], state).transpose(1, 2)


class ISTFTDecoder(_STFTNet):
    """Latents (B, N, Ca) -> audio (B, N * samples per latent), about [-1, 1] (not squashed:
    the caller clips at the output device).

    Its output trails the encoder's input by `delay` = n_fft - hop samples (30 ms at 4 hops of
    10 ms): frame t covers output samples [t hop, t hop + n_fft), and only with that delay is
    all of it in the past of the encoder's frame t (the window ending at hop t). Trained
    without it, the decoder would have to predict 30 ms of future speech in each frame's tail;
    it guessed, the overlaps cancelled, and 600-2400 Hz came out 11-16 dB too quiet after 800
    steps (with the delay: within 4 dB after as many)."""

    def __init__(self, a: AudioConfig, in_channels: int):
        super().__init__()
        w_hop, w_lat = stage_widths(a.vae_width, 2)
        self.in_channels = in_channels
        self.delay = a.n_fft - a.stft_hop
        layers: list[nn.Module] = [
            CausalConv1d(in_channels, w_lat, 3), res_block_1d(w_lat, 3, 1), res_block_1d(w_lat, 3, 2),
            Up1d(w_lat, w_hop, a.stft_hops_per_latent),
            res_block_1d(w_hop, 7, 1), res_block_1d(w_hop, 7, 3),
            PreAct(CausalConv1d(w_hop, 2 * (a.n_fft // 2 + 1), 1)),
            OverlapAdd(a.n_fft, a.stft_hop)]
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, latents: Tensor, state: ConvState | None = None) -> Tensor:
        if latents.dim() != 3 or latents.shape[2] != self.in_channels:
            raise ValueError(f"audio latents must be (B, N, {self.in_channels}), got {tuple(latents.shape)}")
        return self.run(latents.transpose(1, 2), state)
