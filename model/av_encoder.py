"""The causal encoder of the user's side: what the user shows and says -> obs tokens.

The same encoder networks as the VAE's (model/vae.py), with the user-side widths and
`obs_dim` outputs instead of latent channels: video at `obs_spatial` in space and 4x in time
(one grid of tokens a unit), audio at 25 Hz (4 tokens a unit). It streams like the VAE: an
`EncoderState` owned by the caller carries each conv's left context between units, and
unit-by-unit calls equal one whole-clip call.
Pure PyTorch: no processes, no sockets, no clocks; no module holds a session's state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from model.config import FRAMES_PER_UNIT, ModelConfig
from model.vae import AudioEncoder, AVConvState, VideoEncoder, check_same_span


class EncoderState(AVConvState):
    """State of AVEncoder: left context of its video and audio branches, one session."""


class AVEncoder(nn.Module):
    """frames (B, 4N, 3, H, W) and audio (B, N * 3840), in [-1, 1] ->
    video tokens (B, N, gh * gw, obs_dim) with (gh, gw) = cfg.video.obs_grid, row-major,
    and audio tokens (B, 4N, obs_dim)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v, a = cfg.video, cfg.audio
        self.video = VideoEncoder(v.height, v.width, v.obs_spatial, v.obs_width, cfg.obs_dim)
        self.audio = AudioEncoder(a.strides, a.obs_width, cfg.obs_dim)
        self.samples_per_unit = a.samples_per_unit

    def init_state(self, batch: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> EncoderState:
        return EncoderState(self.video.init_state(batch, device, dtype),
                            self.audio.init_state(batch, device, dtype))

    def forward(self, frames: Tensor, audio: Tensor,
                state: EncoderState | None = None) -> tuple[Tensor, Tensor]:
        """Whole clip from silence when state is None; else continue the stream (state is
        updated in place)."""
        check_same_span(frames, FRAMES_PER_UNIT, audio, self.samples_per_unit, "AVEncoder")
        v = self.video(frames, None if state is None else state.video)  # (B, N, F, gh, gw)
        a = self.audio(audio, None if state is None else state.audio)  # (B, 4N, F)
        return v.flatten(3).transpose(2, 3), a
