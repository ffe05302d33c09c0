"""Procedural conversations for the demonstrator checkpoint (DESIGN.md, "The demonstrator
checkpoint"): a user who speaks by espeak-ng and holds up coloured cards, and a character
(Ada, Bram) that greets, listens, answers what it is asked about what the camera shows, and
stops when cut in on. Every episode is a pure function of its seed; the held-out split uses
only held-out voices, phrasings and backgrounds (model/data/tables.py).

    from model.config import cpu
    from model.data import conversation
    ep = conversation(seed=0, cfg=cpu(), split="train", units=64, cache_dir="~/.cache/duplex-tts")
"""
from model.data.episode import Episode, Turn, conversation
from model.data.media import MediaBatch, media_batch
from model.data.speech import SpeechError, Synth, espeak_available
from model.data.tables import CHARACTERS, COLOUR_NAMES, COLOURS, SPLITS

__all__ = ["CHARACTERS", "COLOUR_NAMES", "COLOURS", "Episode", "MediaBatch", "SPLITS",
           "SpeechError", "Synth", "Turn", "conversation", "espeak_available", "media_batch"]
