"""The duplex model: the Transformer with its per-modality embeddings and heads, the causal
AV VAE (the avatar's latents) and the causal AV encoder (the user's side).

Embeddings turn each segment into (B, L, D) tokens; heads turn hidden states back into text
logits and resp velocities. Weights only: a session's state lives in model.streaming.
Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor, nn

from model.av_encoder import AVEncoder
from model.config import PAD, VOCAB_SIZE, ModelConfig
from model.layout import Geometry
from model.transformer import Transformer
from model.vae import AVVAE


class Modality(IntEnum):
    IMAGE = 0  # character reference image latents (sinks)
    VOICE = 1  # character voice reference latents (sinks)
    PERSONA = 2  # character persona text (sinks)
    OBS_VIDEO = 3
    OBS_AUDIO = 4
    TEXT = 5
    RESP_VIDEO = 6
    RESP_AUDIO = 7


class Latents(NamedTuple):
    """The avatar's response of one unit as tokens: video (B, Rv, Cv p^2), audio (B, Ra, Ca)."""
    video: Tensor
    audio: Tensor


def patchify(z: Tensor, p: int) -> Tensor:
    """(B, C, h, w) latent frame -> (B, (h/p)(w/p), C p^2) tokens."""
    B, C, h, w = z.shape
    z = z.view(B, C, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return z.reshape(B, (h // p) * (w // p), C * p * p)


def unpatchify(x: Tensor, p: int, grid: tuple[int, int]) -> Tensor:
    """(B, gh gw, C p^2) tokens -> (B, C, gh p, gw p) latent frame."""
    B, _, Cpp = x.shape
    gh, gw = grid
    C = Cpp // (p * p)
    x = x.view(B, gh, gw, C, p, p).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(B, C, gh * p, gw * p)


class DuplexModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.layout = cfg.layout
        self.geometry = Geometry(resp_grid=cfg.video.token_grid, obs_grid=cfg.video.obs_grid)
        D, lay = cfg.transformer.dim, cfg.layout
        self.transformer = Transformer(cfg.transformer)
        self.vae = AVVAE(cfg.video, cfg.audio)
        self.encoder = AVEncoder(cfg)
        self.modality = nn.Embedding(len(Modality), D)
        self.text_embed = nn.Embedding(VOCAB_SIZE, D)
        self.obs_in = nn.Linear(cfg.obs_dim, D)
        self.video_in = nn.Linear(lay.video_token_dim, D)
        self.audio_in = nn.Linear(lay.audio_token_dim, D)
        self.text_head = nn.Linear(D, VOCAB_SIZE, bias=False)
        self.video_out = nn.Linear(D, lay.video_token_dim)
        self.audio_out = nn.Linear(D, lay.audio_token_dim)

    # -- embeddings: segment -> (B, L, D) -------------------------------------------------
    def _tag(self, x: Tensor, m: Modality) -> Tensor:
        return x + self.modality.weight[int(m)]

    def embed_sinks(self, image: Tensor, voice: Tensor, persona: Tensor) -> Tensor:
        """image tokens (B, Si, Cv p^2), voice latents (B, Sv, Ca), persona ids (B, Sp)."""
        return torch.cat([self._tag(self.video_in(image), Modality.IMAGE),
                          self._tag(self.audio_in(voice), Modality.VOICE),
                          self._tag(self.text_embed(persona), Modality.PERSONA)], dim=1)

    def embed_obs(self, video: Tensor, audio: Tensor) -> Tensor:
        """Encoder features of one unit: video (B, Ov, obs_dim), audio (B, Oa, obs_dim)."""
        return torch.cat([self._tag(self.obs_in(video), Modality.OBS_VIDEO),
                          self._tag(self.obs_in(audio), Modality.OBS_AUDIO)], dim=1)

    def embed_text(self, ids: Tensor) -> Tensor:
        return self._tag(self.text_embed(ids), Modality.TEXT)

    def embed_resp(self, z: Latents) -> Tensor:
        return torch.cat([self._tag(self.video_in(z.video), Modality.RESP_VIDEO),
                          self._tag(self.audio_in(z.audio), Modality.RESP_AUDIO)], dim=1)

    # -- heads ---------------------------------------------------------------------------
    def text_logits(self, h: Tensor) -> Tensor:
        return self.text_head(h)

    def velocity(self, h: Tensor) -> Latents:
        """Hidden states of a resp segment (B, Rv + Ra, D) -> velocity in latent-token space."""
        rv = self.layout.resp_video
        return Latents(self.video_out(h[:, :rv]), self.audio_out(h[:, rv:]))

    # -- latents <-> media ------------------------------------------------------------------
    def latents_to_tokens(self, video: Tensor, audio: Tensor) -> Latents:
        """One unit's VAE latents, video (B, Cv, h, w) and audio (B, 4, Ca), as tokens."""
        return Latents(patchify(video, self.cfg.video.patch), audio)

    def tokens_to_latents(self, z: Latents) -> tuple[Tensor, Tensor]:
        return unpatchify(z.video, self.cfg.video.patch, self.cfg.video.token_grid), z.audio

    def persona_ids(self, text: str | bytes, batch: int = 1) -> Tensor:
        """UTF-8 bytes, truncated or padded with PAD to the preset's persona length: (B, Sp)."""
        raw = text.encode() if isinstance(text, str) else text
        n = self.layout.sink_persona
        ids = list(raw[:n]) + [PAD] * max(0, n - len(raw))
        return torch.tensor(ids, dtype=torch.long, device=self.text_head.weight.device).expand(batch, n)


def init_weights(model: DuplexModel, seed: int) -> None:
    """Seeded `dummy` init: same seed, same weights, on any device, without touching global RNG."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("modulation") or (p.dim() == 1 and name.endswith("bias")):
                p.zero_()
            elif p.dim() == 1:  # norm scales
                p.fill_(1.0)
            else:
                fan_in = p[0].numel()
                std = 0.02 if "embed" in name or name.startswith("modality") else fan_in ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)


def build_model(cfg: ModelConfig, seed: int = 0, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32) -> DuplexModel:
    model = DuplexModel(cfg)
    init_weights(model, seed)
    return model.to(device=device, dtype=dtype).eval()


def count_parameters(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts per part, computed on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = DuplexModel(cfg)
    parts = {name: sum(p.numel() for p in mod.parameters())
             for name, mod in (("transformer", model.transformer), ("vae", model.vae),
                               ("encoder", model.encoder))}
    parts["total"] = sum(p.numel() for p in model.parameters())
    return parts
