"""The causal audio-video VAE: the avatar's media <-> the latents the Transformer generates.

Video: causal 3-D convolutions, 4x in time (one latent frame a 4-frame unit), `vae_spatial`
in space. Audio: causal 1-D convolutions with strides (4, 4, 6, 10): 25 Hz latents, 4 a
unit; or, by AudioConfig.encoder / decoder, the STFT-domain path of model/istft.py (causal
STFT log-magnitudes in, log-magnitude and phase per hop and a streaming overlap-add out).
Video and audio are separate branches; `encode` / `decode` are the joint convenience.

Every call takes an optional state: None is a whole clip from silence; a state (from
`init_encode_state` / `init_decode_state`, owned by the caller) makes the call continue the
stream, and is updated in place. Zero state + unit-by-unit calls == one whole-clip call.
The encoder is deterministic (a latent is the posterior mean), each latent vector at RMS 1.
The encoder classes are shared with the user-side encoder (model/av_encoder.py), which only changes widths and outputs.
Pure PyTorch: no processes, no sockets, no clocks; no module holds a session's state.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.causal_conv import (ConvState, CausalConv1d, CausalConv3d, Down3d, PreAct,
                               StreamingNet, Up1d, Up3d, depth_to_space, res_block_1d,
                               res_block_3d, space_to_depth, stage_widths)
from model.config import FRAMES_PER_UNIT, LATENTS_PER_UNIT, AudioConfig, VideoConfig
from model.istft import ISTFTDecoder, STFTEncoder

PATCH = 2  # video pixels folded into channels before the first conv (and unfolded after the last)
VIDEO_KT = 3  # time taps of the res blocks' first conv (in frames of that stage)
AUDIO_K = 7  # kernel of the audio res blocks and of the audio stems


@dataclass
class AVConvState:
    """One session's left context of a video network and an audio network."""
    video: ConvState
    audio: ConvState

    def reset(self, slot: int | None = None) -> None:
        self.video.reset(slot)
        self.audio.reset(slot)


class VAEEncoderState(AVConvState):
    """State of AVVAE.encode."""


class DecoderState(AVConvState):
    """State of AVVAE.decode."""


def check_same_span(video: Tensor, video_per_unit: int, audio: Tensor, audio_per_unit: int,
                    where: str) -> None:
    """Video and audio of one call must cover the same units (dim 1 of each, in steps)."""
    if video.shape[1] * audio_per_unit != audio.shape[1] * video_per_unit:
        raise ValueError(f"{where}: video {tuple(video.shape)} ({video_per_unit} steps a unit) and "
                         f"audio {tuple(audio.shape)} ({audio_per_unit} steps a unit) cover different "
                         f"spans; pass the same units of both, or use one branch alone")


def _levels(spatial: int) -> int:
    """Stride-2 stages after the 2x2 patchify to reach `spatial`; the last two also halve time."""
    levels = spatial.bit_length() - 1 - (PATCH.bit_length() - 1)
    if PATCH << levels != spatial or levels < 2:
        raise ValueError(f"video spatial compression must be a power of two >= {PATCH * 4}, "
                         f"got {spatial}")
    return levels


class VideoEncoder(StreamingNet):
    """Frames (B, T, 3, H, W), T a multiple of 4 -> (B, T / 4, out, H / s, W / s).

    Frames are first patchified 2x2 into channels (space to depth). Stage i then runs at
    H / 2^(i+1) with width first * 2^i (capped): a res block (a causal (3, 3, 3) conv and a
    (1, 3, 3) conv), then a stride-2 conv to the next stage; the last two of these also fold
    pairs of frames into channels (4x in time, where space is small and folding cheap).
    """

    def __init__(self, height: int, width: int, spatial: int, first_width: int, out_channels: int):
        super().__init__()
        levels = _levels(spatial)
        widths = stage_widths(first_width, levels + 1)
        self.hw = (height, width)
        sizes = [(height // (PATCH << i), width // (PATCH << i)) for i in range(levels + 1)]
        layers: list[nn.Module] = [CausalConv3d(3 * PATCH * PATCH, widths[0], 1, sizes[0])]
        for i in range(levels):
            layers += [res_block_3d(widths[i], sizes[i], VIDEO_KT),
                       Down3d(widths[i], widths[i + 1], sizes[i], fold_time=i >= levels - 2)]
        layers += [res_block_3d(widths[-1], sizes[-1], VIDEO_KT),
                   PreAct(CausalConv3d(widths[-1], out_channels, 1, sizes[-1]))]
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, frames: Tensor, state: ConvState | None = None) -> Tensor:
        B, T, C, H, W = frames.shape
        if T % FRAMES_PER_UNIT or C != 3 or (H, W) != self.hw:
            raise ValueError(f"frames must be (B, T, 3, {self.hw[0]}, {self.hw[1]}) with T a "
                             f"multiple of {FRAMES_PER_UNIT}, got {tuple(frames.shape)}")
        return self.run(space_to_depth(frames, PATCH), state)


class VideoDecoder(StreamingNet):
    """Latent frames (B, N, Cv, H / s, W / s) -> frames (B, 4N, 3, H, W) in [-1, 1].
    The mirror of VideoEncoder: time unfolds at the first two upsamplings, and the last conv
    predicts 2x2 pixels a position (depth to space)."""

    def __init__(self, height: int, width: int, spatial: int, first_width: int, in_channels: int):
        super().__init__()
        levels = _levels(spatial)
        widths = stage_widths(first_width, levels + 1)
        self.in_channels = in_channels
        sizes = [(height // (PATCH << i), width // (PATCH << i)) for i in range(levels + 1)]
        layers: list[nn.Module] = [CausalConv3d(in_channels, widths[-1], VIDEO_KT, sizes[-1])]
        for i in reversed(range(1, levels + 1)):
            layers += [res_block_3d(widths[i], sizes[i], VIDEO_KT),
                       Up3d(widths[i], widths[i - 1], sizes[i], unfold_time=i > levels - 2)]
        layers += [res_block_3d(widths[0], sizes[0], VIDEO_KT),
                   PreAct(CausalConv3d(widths[0], 3 * PATCH * PATCH, 1, sizes[0]))]
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, latents: Tensor, state: ConvState | None = None) -> Tensor:
        if latents.dim() != 5 or latents.shape[2] != self.in_channels:
            raise ValueError(f"video latents must be (B, N, {self.in_channels}, h, w), "
                             f"got {tuple(latents.shape)}")
        return depth_to_space(torch.tanh(self.run(latents, state)), PATCH)


class AudioEncoder(StreamingNet):
    """Audio (B, L), L a multiple of prod(strides) -> (B, L / prod(strides), out).

    Stage i: a res block at width first * 2^i (capped), then a causal conv of kernel 2s and
    stride s to the next width."""

    def __init__(self, strides: tuple[int, ...], first_width: int, out_channels: int):
        super().__init__()
        widths = stage_widths(first_width, len(strides) + 1)
        self.hop = 1
        for s in strides:
            self.hop *= s
        layers: list[nn.Module] = [CausalConv1d(1, widths[0], AUDIO_K)]
        for i, s in enumerate(strides):
            layers += [res_block_1d(widths[i], AUDIO_K, 1), CausalConv1d(widths[i], widths[i + 1], 2 * s, s)]
        layers += [res_block_1d(widths[-1], 3, 1), PreAct(CausalConv1d(widths[-1], out_channels, 3))]
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, audio: Tensor, state: ConvState | None = None) -> Tensor:
        if audio.dim() != 2 or audio.shape[1] % self.hop:
            raise ValueError(f"audio must be (B, L) with L a multiple of {self.hop}, "
                             f"got {tuple(audio.shape)}")
        return self.run(audio[:, None], state).transpose(1, 2)


class AudioDecoder(StreamingNet):
    """Latents (B, N, Ca) -> audio (B, N * prod(strides)) in [-1, 1]: the mirror of
    AudioEncoder, upsampling by sub-pixel causal convs."""

    def __init__(self, strides: tuple[int, ...], first_width: int, in_channels: int):
        super().__init__()
        widths = stage_widths(first_width, len(strides) + 1)
        self.in_channels = in_channels
        self.delay = 0  # samples its output trails the encoder's input (model/istft.py: 30 ms)
        layers: list[nn.Module] = [CausalConv1d(in_channels, widths[-1], 3), res_block_1d(widths[-1], 3, 1)]
        for i in reversed(range(len(strides))):
            layers += [Up1d(widths[i + 1], widths[i], strides[i]), res_block_1d(widths[i], AUDIO_K, 1)]
        layers.append(PreAct(CausalConv1d(widths[0], 1, AUDIO_K)))
        self.layers = nn.ModuleList(layers)
        self.number_layers()

    def forward(self, latents: Tensor, state: ConvState | None = None) -> Tensor:
        if latents.dim() != 3 or latents.shape[2] != self.in_channels:
            raise ValueError(f"audio latents must be (B, N, {self.in_channels}), got {tuple(latents.shape)}")
        return torch.tanh(self.run(latents.transpose(1, 2), state))[:, 0]


def unit_rms(z: Tensor, dim: int) -> Tensor:
    """Each latent vector (the channels at one time and place) scaled to RMS 1: the flow-matching
    targets then have the scale of its noise whatever the codec learnt (unscaled, the demo
    codec's audio latents came out with a standard deviation of 2.8)."""
    zf = z.float()
    return (zf * torch.rsqrt(zf.pow(2).mean(dim, keepdim=True) + 1e-6)).to(z.dtype)


class AVVAE(nn.Module):
    """The causal AV VAE. Shapes (B batch, T frames = 4N, N units, s = video.vae_spatial):
    frames (B, T, 3, H, W) <-> video latents (B, N, Cv, H / s, W / s);
    audio (B, N * 3840) <-> audio latents (B, 4N, Ca). Media in [-1, 1]."""

    def __init__(self, video: VideoConfig, audio: AudioConfig):
        super().__init__()
        v, a = video, audio
        self.video_encoder = VideoEncoder(v.height, v.width, v.vae_spatial, v.vae_width, v.vae_channels)
        self.video_decoder = VideoDecoder(v.height, v.width, v.vae_spatial, v.vae_width, v.vae_channels)
        self.audio_encoder = (STFTEncoder(a, a.vae_channels) if a.encoder == "stft"
                              else AudioEncoder(a.strides, a.vae_width, a.vae_channels))
        self.audio_decoder = (ISTFTDecoder(a, a.vae_channels) if a.decoder == "istft"
                              else AudioDecoder(a.strides, a.vae_width, a.vae_channels))
        self.samples_per_unit = a.samples_per_unit
        # samples by which decoded audio trails the audio its latents were encoded from
        self.audio_delay: int = self.audio_decoder.delay

    # -- state ----------------------------------------------------------------------------
    def init_encode_state(self, batch: int, device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> VAEEncoderState:
        return VAEEncoderState(self.video_encoder.init_state(batch, device, dtype),
                               self.audio_encoder.init_state(batch, device, dtype))

    def init_decode_state(self, batch: int, device: torch.device | str | None = None,
                          dtype: torch.dtype | None = None) -> DecoderState:
        return DecoderState(self.video_decoder.init_state(batch, device, dtype),
                            self.audio_decoder.init_state(batch, device, dtype))

    # -- joint ----------------------------------------------------------------------------
    def encode(self, frames: Tensor, audio: Tensor,
               state: VAEEncoderState | None = None) -> tuple[Tensor, Tensor]:
        """frames (B, 4N, 3, H, W), audio (B, N * 3840) -> video latents (B, N, Cv, h, w),
        audio latents (B, 4N, Ca)."""
        check_same_span(frames, FRAMES_PER_UNIT, audio, self.samples_per_unit, "AVVAE.encode")
        return (self.encode_video(frames, None if state is None else state.video),
                self.encode_audio(audio, None if state is None else state.audio))

    def decode(self, video_latents: Tensor, audio_latents: Tensor,
               state: DecoderState | None = None) -> tuple[Tensor, Tensor]:
        """video latents (B, N, Cv, h, w), audio latents (B, 4N, Ca) -> frames
        (B, 4N, 3, H, W), audio (B, N * 3840), both in [-1, 1]."""
        check_same_span(video_latents, 1, audio_latents, LATENTS_PER_UNIT, "AVVAE.decode")
        return (self.decode_video(video_latents, None if state is None else state.video),
                self.decode_audio(audio_latents, None if state is None else state.audio))

    # -- one branch -----------------------------------------------------------------------
    def encode_video(self, frames: Tensor, state: ConvState | None = None) -> Tensor:
        return unit_rms(self.video_encoder(frames, state), 2)

    def encode_audio(self, audio: Tensor, state: ConvState | None = None) -> Tensor:
        """Audio (B, n * 3840) -> (B, 4n, Ca); also the character's voice reference."""
        return unit_rms(self.audio_encoder(audio, state), -1)

    def decode_video(self, latents: Tensor, state: ConvState | None = None) -> Tensor:
        return self.video_decoder(latents, state)

    def decode_audio(self, latents: Tensor, state: ConvState | None = None) -> Tensor:
        return self.audio_decoder(latents, state)

    def encode_image(self, image: Tensor) -> Tensor:
        """A character's reference image (B, 3, H, W) -> one latent frame (B, Cv, h, w): the
        encode of a one-unit clip, from silence, that shows the image in all 4 frames."""
        return self.encode_video(image[:, None].expand(-1, FRAMES_PER_UNIT, -1, -1, -1))[:, 0]

