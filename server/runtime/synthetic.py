"""A seeded synthetic input stream: a character and, per unit, user video + audio.

Unit n's media depend only on (seed, n), so a stream can be generated on the fly, in any
process, and replayed exactly (the bench, the split == single test). Pixels are uniform uint8,
samples uniform in [-1, 1]; the model's cost does not depend on them.
"""
from __future__ import annotations

import numpy as np
import torch

from model.config import FRAMES_PER_UNIT, ModelConfig
from model.streaming import Character


def synthetic_character(cfg: ModelConfig, seed: int = 1) -> Character:
    g = torch.Generator().manual_seed(seed)
    n = cfg.character.voice_units * cfg.audio.samples_per_unit
    image = torch.rand(3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1
    return Character(name="synthetic", image=image, voice=torch.rand(n, generator=g) * 2 - 1,
                     persona="a calm synthetic test persona")


def synthetic_unit(cfg: ModelConfig, seed: int, unit: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit `unit` of stream `seed`, as the wire carries it: frames (1, 4, H, W, 3) uint8 RGB and
    audio (1, samples) float32 in [-1, 1]."""
    rng = np.random.default_rng((seed, unit))
    v = cfg.video
    frames = rng.integers(0, 256, (1, FRAMES_PER_UNIT, v.height, v.width, 3), dtype=np.uint8)
    audio = rng.uniform(-1, 1, (1, cfg.audio.samples_per_unit)).astype(np.float32)
    return frames, audio
