"""Episodes as torch tensors in the training path's layouts (model/train.py's Conversation),
media only: the response latents and the image/voice tokens need the codec (AVVAE), so the
caller encodes `resp_frames`, `resp_audio`, `image` and `voice` with it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.config import ModelConfig
from model.data import speech
from model.data.episode import CHARACTER_LEVEL_DBFS, Episode
from model.data.face import CHARACTERS_DIR, portrait
from model.data.tables import CHARACTERS


@dataclass
class MediaBatch:
    frames: torch.Tensor  # (B, 4N, 3, H, W) the user's video in [-1, 1]
    audio: torch.Tensor  # (B, N * S) the user's audio
    text: torch.Tensor  # (B, N, k) int64 text slots (bytes, PAD when silent): targets
    resp_frames: torch.Tensor  # (B, 4N, 3, H, W) the character's video in [-1, 1]
    resp_audio: torch.Tensor  # (B, N * S) the character's audio
    image: torch.Tensor  # (B, 3, H, W) the character's portrait in [-1, 1] (the image sink)
    voice: torch.Tensor  # (B, voice_units * S) the character's voice reference
    persona: list[str]  # the character's persona text (the persona sink)


def video_tensor(x: np.ndarray) -> torch.Tensor:
    """(N, 4, H, W, 3) uint8 -> (4N, 3, H, W) float in [-1, 1]."""
    n, f, h, w, c = x.shape
    return torch.from_numpy(x.reshape(n * f, h, w, c)).permute(0, 3, 1, 2).float() / 127.5 - 1


VOICE_TEXT = "Hello, I am {name}. Nice to meet you, shall we talk?"


def voice_clip(character: str, rate: int, synth: speech.Synth | None = None) -> np.ndarray:
    """The character saying VOICE_TEXT with its espeak-ng settings at its level, trimmed:
    float32 at `rate`. server/characters/<id>/voice.wav holds it at 24 kHz (16-bit)."""
    spec = CHARACTERS[character]
    synth = synth if synth is not None else speech.Synth()
    return speech.utterance(synth, VOICE_TEXT.format(name=spec.name), spec.voice, rate,
                            CHARACTER_LEVEL_DBFS, spec.speed, spec.pitch)


def voice_reference(character: str, cfg: ModelConfig, synth: speech.Synth | None = None) -> np.ndarray:
    """The voice sink's samples, (voice_units * samples a unit,) float32: the start of
    `voice_clip`, as the daemon takes the start of voice.wav."""
    n = cfg.character.voice_units * cfg.audio.samples_per_unit
    x = voice_clip(character, cfg.audio.sample_rate, synth)
    return np.pad(x, (0, max(0, n - x.size)))[:n]


def persona(character: str, characters_dir: Path | None = None) -> str:
    import json
    folder = Path(characters_dir) if characters_dir is not None else CHARACTERS_DIR
    return json.loads((folder / character / "character.json").read_text(encoding="utf-8"))["persona"]


def media_batch(episodes: list[Episode], cfg: ModelConfig, synth: speech.Synth | None = None,
                characters_dir: Path | None = None) -> MediaBatch:
    """Stack episodes of one length and preset into a MediaBatch."""
    if len({e.units for e in episodes}) != 1:
        raise ValueError(f"episodes of different lengths: {[e.units for e in episodes]}")
    folder = Path(characters_dir) if characters_dir is not None else CHARACTERS_DIR
    h, w = cfg.video.height, cfg.video.width
    images = [portrait(str(folder / e.character / "image.png"), h, w)[0] for e in episodes]
    return MediaBatch(
        frames=torch.stack([video_tensor(e.user_frames) for e in episodes]),
        audio=torch.stack([torch.from_numpy(e.user_audio.reshape(-1)) for e in episodes]),
        text=torch.stack([torch.from_numpy(e.text) for e in episodes]),
        resp_frames=torch.stack([video_tensor(e.char_frames) for e in episodes]),
        resp_audio=torch.stack([torch.from_numpy(e.char_audio.reshape(-1)) for e in episodes]),
        image=torch.stack([torch.from_numpy(im.transpose(2, 0, 1).copy()) / 127.5 - 1 for im in images]),
        voice=torch.stack([torch.from_numpy(voice_reference(e.character, cfg, synth)) for e in episodes]),
        persona=[persona(e.character, folder) for e in episodes])
