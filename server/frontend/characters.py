"""The character folder: one sub-folder per character (character.json, image.png, voice.wav),
loaded once at start-up into the model's Character at the preset's resolution and audio rate.

A missing or unreadable file, a bad field or a voice sample too short for the preset is a
`CharacterError` that names the file and says what to fix: the daemon does not start with a
character it cannot prefill. Decoding and resampling are PyAV's; nothing runs per call.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from model.config import ModelConfig
from model.streaming import Character

FILES = ("character.json", "image.png", "voice.wav")


class CharacterError(ValueError):
    """A character that cannot be served; the message names the file and the fix."""


@dataclass(frozen=True)
class CharacterEntry:
    id: str  # the folder's name
    name: str
    persona: str
    image_path: Path
    character: Character  # at the preset's resolution and audio rate

    def public(self) -> dict[str, str]:
        """What GET /characters tells the page."""
        return {"id": self.id, "name": self.name, "persona": self.persona,
                "image": f"/characters/{self.id}/image.png"}


def _read_image(path: Path, width: int, height: int) -> np.ndarray:
    """(3, H, W) float32 in [-1, 1]: centre-cropped to the target aspect ratio, then resized."""
    try:
        with av.open(str(path)) as c:
            frame = next(c.decode(video=0))
    except (av.FFmpegError, StopIteration, OSError) as e:
        raise CharacterError(f"{path}: not a readable image ({e}); use a PNG or JPEG") from e
    rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3)
    h, w = rgb.shape[:2]
    if w * height > h * width:  # too wide: crop the sides
        cw = h * width // height
        rgb = rgb[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:  # too tall: crop top and bottom
        ch = w * height // width
        rgb = rgb[(h - ch) // 2:(h - ch) // 2 + ch]
    small = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
        width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
    return small.transpose(2, 0, 1).astype(np.float32) * (2 / 255) - 1


def _read_voice(path: Path, rate: int, samples: int) -> np.ndarray:
    """(samples,) float32 in [-1, 1] at `rate`, mono: the start of the recording."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    chunks = []
    try:
        with av.open(str(path)) as c:
            for frame in c.decode(audio=0):
                chunks += [f.to_ndarray()[0] for f in resampler.resample(frame)]
            chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
    except (av.FFmpegError, OSError) as e:
        raise CharacterError(f"{path}: not a readable audio file ({e}); use a WAV") from e
    voice = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if voice.size < samples:
        raise CharacterError(f"{path}: the voice sample is {voice.size / rate:.2f} s, the preset "
                             f"needs at least {samples / rate:.2f} s; record a longer one")
    return np.clip(voice[:samples], -1, 1).astype(np.float32)


def _read_meta(path: Path) -> tuple[str, str]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CharacterError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CharacterError(f"{path}: expected an object {{\"name\": ..., \"persona\": ...}}")
    for key in ("name", "persona"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise CharacterError(f"{path}: field {key!r} must be a non-empty string, got {meta.get(key)!r}")
    return meta["name"].strip(), meta["persona"].strip()


def load_character(folder: Path, cfg: ModelConfig) -> CharacterEntry:
    for f in FILES:
        if not (folder / f).is_file():
            raise CharacterError(f"{folder}: {f} is missing; a character folder holds {', '.join(FILES)}")
    name, persona = _read_meta(folder / "character.json")
    image = _read_image(folder / "image.png", cfg.video.width, cfg.video.height)
    voice = _read_voice(folder / "voice.wav", cfg.audio.sample_rate,
                        cfg.character.voice_units * cfg.audio.samples_per_unit)
    return CharacterEntry(folder.name, name, persona, folder / "image.png",
                          Character(name, torch.from_numpy(image), torch.from_numpy(voice), persona))


def load_characters(root: Path, cfg: ModelConfig) -> dict[str, CharacterEntry]:
    """Every character under `root`, by id, in name order; the first is the default."""
    if not root.is_dir():
        raise CharacterError(f"{root}: the characters folder does not exist; pass --characters DIR")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not folders:
        raise CharacterError(f"{root}: no character folders; each holds {', '.join(FILES)}")
    return {f.name: load_character(f, cfg) for f in folders}
