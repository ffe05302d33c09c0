"""Seeded synthetic inputs for the model tests: a character and a conversation."""
from __future__ import annotations

import torch

from model.config import ModelConfig
from model.duplex import DuplexModel, Latents, patchify
from model.streaming import Character
from model.train import Conversation


def make_character(cfg: ModelConfig, seed: int = 1) -> Character:
    g = torch.Generator().manual_seed(seed)
    n = cfg.character.voice_units * cfg.audio.samples_per_unit
    return Character(name="test", image=torch.rand(3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1,
                     voice=torch.rand(n, generator=g) * 2 - 1, persona="a calm test persona")


def make_conversation(model: DuplexModel, character: Character, units: int, batch: int = 1,
                      seed: int = 2) -> Conversation:
    """Random user media, random text bytes and random response latents for `units` units."""
    cfg, lay = model.cfg, model.layout
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        image = patchify(model.vae.encode_image(character.image.expand(batch, -1, -1, -1)), cfg.video.patch)
        voice = model.vae.encode_audio(character.voice.expand(batch, -1))
    return Conversation(
        image=image, voice=voice, persona=model.persona_ids(character.persona, batch),
        frames=torch.rand(batch, 4 * units, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1,
        audio=torch.rand(batch, units * cfg.audio.samples_per_unit, generator=g) * 2 - 1,
        text=torch.randint(0, 256, (batch, units, lay.text), generator=g),
        resp=Latents(torch.randn(batch, units, lay.resp_video, lay.video_token_dim, generator=g),
                     torch.randn(batch, units, lay.resp_audio, lay.audio_token_dim, generator=g)))
