"""One procedural conversation, a pure function of (seed, split, preset, units, character):
the plan (who says what when, by the policy below), then the media.

The policy: the character greets at the start; while the user speaks it listens (silent, an
idle face); 1-2 units after the user stops (the first unit without the user's voice) it
answers: the card's colour, its name, its small talk, a hello or a goodbye. If the user speaks
while it talks (barge-in), it stops 1-2 units after the onset and listens, then answers that.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from model.config import FRAMES_PER_UNIT, PAD, ModelConfig
from model.data import speech
from model.data.camera import Camera
from model.data.face import FaceRenderer
from model.data.tables import (BACKGROUNDS, CHARACTERS, COLOUR_NAMES, INTENT_WEIGHTS, INTENTS,
                               NOISE_DBFS, NOISE_KINDS, OPENERS, OPUS_KBPS, PHRASES, SPLITS,
                               USER_GAIN_DB, USER_LEVEL_DBFS, USER_PITCH, USER_SPEED_WPM,
                               USER_VOICES, USER_WORD_GAP, Intent, Split, answer)

CHARACTER_LEVEL_DBFS = -20.0  # the character's voice, voiced RMS
P_NO_CARD = 0.2
P_BARGE_IN = 0.3
# An answer's text slots run ahead of its voice and end this many units before it: the words
# are chosen in text and the voice follows them. Spread evenly over the whole utterance (the
# first run), the colour word's text came with or after its sound, and the model read its text
# off its own speech: teacher-forced, 16/16 colours right; in a call, its own speech said a
# wrong colour and the text followed. 3 units stay well inside the demo's 8-unit window.
TEXT_LEAD_UNITS = 3
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


@dataclass(frozen=True)
class Turn:
    """One utterance. Samples and units count from the episode's start; `end_unit` is the first
    unit after it (exclusive). A character's turn cut by a barge-in ends early (`cut`) and
    `spoken` is the part of `text` its text slots carried."""
    speaker: Literal["user", "character"]
    intent: str  # user: an Intent; character: "greet" or the intent it answers
    text: str  # what was (meant to be) said
    start_sample: int
    end_sample: int
    start_unit: int
    end_unit: int
    cut: bool = False
    spoken: str = ""
    params: dict = field(default_factory=dict)  # voice, speed, pitch, ...


@dataclass
class Episode:
    """A conversation of `units` units of 160 ms at the preset's resolution and audio rate.

    Media, per unit: user_frames (N, 4, H, W, 3) uint8 RGB, user_audio (N, S) float32 (S =
    samples a unit, after noise and the Opus round trip), char_frames, char_audio likewise,
    text (N, k) int64: the answer's UTF-8 bytes while the character speaks, running ahead of
    its voice (TEXT_LEAD_UNITS), PAD elsewhere.
    Labels: user_speaking / char_speaking (N,) bool; card (N,) int8 (index in COLOUR_NAMES,
    -1: no card) and card_boxes (N, 4, 4) int16 (y0, x0, y1, x1 of each frame, -1: none); the
    turns; user_stops (the first unit without the user's voice after each user turn);
    answers ((stop unit, answer start unit) pairs); barge_ins ((onset unit, character stops
    unit) pairs); meta: every choice the episode made."""
    seed: int
    split: Split
    character: str
    user_frames: np.ndarray
    user_audio: np.ndarray
    char_frames: np.ndarray
    char_audio: np.ndarray
    text: np.ndarray
    user_speaking: np.ndarray
    char_speaking: np.ndarray
    card: np.ndarray
    card_boxes: np.ndarray
    turns: tuple[Turn, ...]
    user_stops: tuple[int, ...]
    answers: tuple[tuple[int, int], ...]
    barge_ins: tuple[tuple[int, int], ...]
    meta: dict

    @property
    def units(self) -> int:
        return self.text.shape[0]

    @property
    def card_colour(self) -> str | None:
        return self.meta["card"]

    def text_slots(self, turn: Turn) -> list[tuple[int, int]]:
        """(unit, slot) of each of the character's `turn`'s text bytes within the episode, in order."""
        return [(u, i) for u in range(max(0, turn.start_unit), min(turn.end_unit, self.units))
                for i in range(self.text.shape[1]) if self.text[u, i] != PAD]

    def crop(self, start: int, units: int) -> "Episode":
        """Units [start, start + units) as an episode of their own: media and per-unit labels
        cut, turns and unit pairs shifted by `start` (those outside dropped)."""
        if not 0 <= start <= self.units - units or units < 1:
            raise ValueError(f"crop [{start}, {start + units}) outside the episode's {self.units} units")
        end, spu = start + units, self.user_audio.shape[1]
        cut = slice(start, end)
        inside = lambda u: start <= u < end  # noqa: E731
        turns = tuple(replace(t, start_sample=t.start_sample - start * spu, end_sample=t.end_sample - start * spu,
                              start_unit=t.start_unit - start, end_unit=t.end_unit - start)
                      for t in self.turns if t.start_unit < end and t.end_unit > start)
        return replace(
            self, user_frames=self.user_frames[cut], user_audio=self.user_audio[cut],
            char_frames=self.char_frames[cut], char_audio=self.char_audio[cut], text=self.text[cut],
            user_speaking=self.user_speaking[cut], char_speaking=self.char_speaking[cut],
            card=self.card[cut], card_boxes=self.card_boxes[cut], turns=turns,
            user_stops=tuple(u - start for u in self.user_stops if inside(u)),
            answers=tuple((a - start, b - start) for a, b in self.answers if inside(a) and inside(b)),
            barge_ins=tuple((a - start, b - start) for a, b in self.barge_ins if inside(a) and inside(b)),
            meta={**self.meta, "crop": (start, units)})


def _units_of(start: int, end: int, spu: int) -> tuple[int, int]:
    """Units touched by samples [start, end)."""
    return start // spu, -(-end // spu)


def _spread(data: bytes, units: int, k: int) -> list[bytes]:
    """`data` over `units` units, at most k bytes each, in order and evenly."""
    bounds = [round(i * len(data) / units) for i in range(units + 1)]
    return [data[bounds[i]:bounds[i + 1]] for i in range(units)]


@lru_cache(maxsize=8)
def _synth(cache_dir: str | None) -> speech.Synth:
    """One Synth per cache folder in a process, so its memory cache serves every episode."""
    return speech.Synth(cache_dir)


def conversation(seed: int, cfg: ModelConfig, split: Split = "train", units: int = 64, *,
                 character: str | None = None, card: str | None = "random",
                 cache_dir: str | Path | None = None, synth: speech.Synth | None = None,
                 characters_dir: Path | None = None) -> Episode:
    """The episode of `seed` in `split` at `cfg`'s resolution, audio rate and text slots.

    character: "ada" or "bram" (None: drawn from the seed). card: "random" (drawn from the
    seed: no card one time in five), a colour name, or None (no card); the other choices are
    the same whichever is given. cache_dir: keep espeak-ng's utterances there (keyed by all
    their parameters; the process also keeps the last few hundred in memory); or pass a
    `synth` of your own. characters_dir: where <id>/image.png is (server/characters/)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if units < 1:
        raise ValueError(f"units must be >= 1, got {units}")
    synth = synth if synth is not None else _synth(None if cache_dir is None else str(cache_dir))
    H, W, rate = cfg.video.height, cfg.video.width, cfg.audio.sample_rate
    spu, k = cfg.audio.samples_per_unit, cfg.text_slots
    total = units * spu
    plan_ss, audio_ss, cam_ss, face_ss = np.random.SeedSequence([seed, _SPLIT_ID[split], 0xD0]).spawn(4)
    rng = np.random.default_rng(plan_ss)

    # --- the episode's choices ---
    drawn_character = sorted(CHARACTERS)[int(rng.integers(len(CHARACTERS)))]  # drawn even when given
    cid = character if character is not None else drawn_character
    if cid not in CHARACTERS:
        raise ValueError(f"unknown character {cid!r}; choose one of {sorted(CHARACTERS)}")
    spec = CHARACTERS[cid]
    voices = USER_VOICES[split]
    lo, hi, st = USER_SPEED_WPM
    plo, phi, pst = USER_PITCH
    user = dict(voice=voices[int(rng.integers(len(voices)))],
                speed=int(rng.choice(np.arange(lo, hi + 1, st))),
                pitch=int(rng.choice(np.arange(plo, phi + 1, pst))),
                word_gap=int(rng.integers(USER_WORD_GAP[0], USER_WORD_GAP[1] + 1)))
    gain_db = float(rng.uniform(-USER_GAIN_DB, USER_GAIN_DB))
    noise_kind = NOISE_KINDS[int(rng.integers(len(NOISE_KINDS)))]
    noise_db = float(rng.uniform(*NOISE_DBFS))
    kbps = int(OPUS_KBPS[int(rng.integers(len(OPUS_KBPS)))])
    background = BACKGROUNDS[split][int(rng.integers(len(BACKGROUNDS[split])))]
    drawn = None if rng.random() < P_NO_CARD else COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
    if card == "random":
        card = drawn
    elif card is not None and card not in COLOUR_NAMES:
        raise ValueError(f"card must be 'random', None or one of {COLOUR_NAMES}, got {card!r}")

    def say_user(intent: Intent) -> tuple[str, np.ndarray]:
        phrases, openers = PHRASES[split][intent], OPENERS[split]
        phrase = openers[int(rng.integers(len(openers)))] + phrases[int(rng.integers(len(phrases)))]
        return phrase, speech.utterance(synth, phrase, rate=rate, level_dbfs=USER_LEVEL_DBFS + gain_db, **user)

    def say_char(text: str) -> np.ndarray:
        return speech.utterance(synth, text, spec.voice, rate, CHARACTER_LEVEL_DBFS, spec.speed, spec.pitch)

    # --- the plan: the policy, unit by unit ---
    user_audio = np.zeros(total, np.float32)
    char_audio = np.zeros(total, np.float32)
    text = np.full((units, k), PAD, np.int64)
    user_speaking = np.zeros(units, bool)
    char_speaking = np.zeros(units, bool)
    turns: list[Turn] = []
    stops, answers, barges = [], [], []

    def place(buf: np.ndarray, x: np.ndarray, start: int) -> None:
        if start < total:
            n = min(x.size, total - start)
            buf[start:start + n] += x[:n]

    def character_turn(intent: str, words: str, start_unit: int) -> tuple[int, int | None]:
        """The character says `words` from `start_unit`, unless the user barges in. Returns the
        unit after its turn and, for a barge-in, the sample where the user starts."""
        x = say_char(words)
        data = words.encode()
        span = max(-(-x.size // spu), -(-len(data) // k))  # units it speaks (text never crowds)
        end_unit, user_at = start_unit + span, None
        if span >= 5 and rng.random() < P_BARGE_IN:
            onset = start_unit + int(rng.integers(1, span - 3))
            user_at = onset * spu + int(rng.integers(0, spu // 2))
            end_unit = onset + int(rng.integers(1, 3))  # stops 1-2 units after the onset
            if onset < units:
                barges.append((onset, end_unit))
            x = x[:(end_unit - start_unit) * spu].copy()
            fade = min(x.size, rate // 200)  # 5 ms
            if fade:
                x[-fade:] *= np.linspace(1, 0, fade, dtype=np.float32)
        text_units = max(-(-len(data) // k), span - TEXT_LEAD_UNITS)
        pieces = _spread(data, text_units, k)[:end_unit - start_unit]
        spoken = b"".join(pieces)
        place(char_audio, x, start_unit * spu)
        char_speaking[start_unit:min(end_unit, units)] = True
        for i, p in enumerate(pieces):
            if start_unit + i < units:
                text[start_unit + i, :len(p)] = list(p)
        turns.append(Turn("character", intent, words, start_unit * spu, start_unit * spu + x.size,
                          start_unit, end_unit, cut=user_at is not None,
                          spoken=spoken.decode(errors="ignore"),
                          params=dict(voice=spec.voice, speed=spec.speed, pitch=spec.pitch)))
        return end_unit, user_at

    greet = spec.greetings[int(rng.integers(len(spec.greetings)))]
    end_unit, user_at = character_turn("greet", greet, int(rng.integers(0, 2)))
    goodbye_said = False
    while not goodbye_said:
        if user_at is None:
            user_at = (end_unit + int(rng.integers(1, 7))) * spu + int(rng.integers(0, spu))
        if user_at >= total:
            break
        remaining = units - user_at // spu
        weights = np.array([INTENT_WEIGHTS[i] * (4.0 if i == "goodbye" and remaining < 24 else 1.0)
                            for i in INTENTS])
        intent = INTENTS[int(rng.choice(len(INTENTS), p=weights / weights.sum()))]
        phrase, x = say_user(intent)
        place(user_audio, x, user_at)
        u0, u1 = _units_of(user_at, user_at + x.size, spu)
        user_speaking[u0:min(u1, units)] = True
        turns.append(Turn("user", intent, phrase, user_at, user_at + x.size, u0, u1, params=dict(user)))
        if u1 >= units:
            break
        stops.append(u1)
        start = u1 + int(rng.integers(1, 3))  # answers 1-2 units after the user stops
        answers.append((u1, start))
        words = answer(spec, intent, card, int(rng.integers(1 << 16)))
        end_unit, user_at = character_turn(intent, words, start)
        goodbye_said = intent == "goodbye" and user_at is None

    # --- the user's microphone: noise and Opus ---
    arng = np.random.default_rng(audio_ss)
    mic = user_audio + speech.noise(arng, total, noise_kind, noise_db, rate)
    mic = speech.opus_round_trip(np.clip(mic, -1, 1), rate, kbps)

    # --- the camera and the face ---
    F = units * FRAMES_PER_UNIT
    cam = Camera(np.random.default_rng(cam_ss), H, W, background, card)
    user_frames = np.empty((F, H, W, 3), np.uint8)
    boxes = np.empty((F, 4), np.int16)
    for i in range(F):
        user_frames[i], boxes[i] = cam.frame(i)
    face = FaceRenderer(spec, np.random.default_rng(face_ss), H, W, F, characters_dir)
    char_frames = face.frames(char_audio)

    card_idx = -1 if card is None else COLOUR_NAMES.index(card)
    meta = dict(character=cid, user=user, gain_db=gain_db, noise=noise_kind, noise_dbfs=noise_db,
                opus_kbps=kbps, background=background, card=card,
                phrases=tuple(t.text for t in turns if t.speaker == "user"),
                preset=cfg.name, sample_rate=rate)
    return Episode(
        seed=seed, split=split, character=cid,
        user_frames=user_frames.reshape(units, FRAMES_PER_UNIT, H, W, 3),
        user_audio=mic.reshape(units, spu),
        char_frames=char_frames.reshape(units, FRAMES_PER_UNIT, H, W, 3),
        char_audio=np.clip(char_audio, -1, 1).reshape(units, spu),
        text=text, user_speaking=user_speaking, char_speaking=char_speaking,
        card=np.full(units, card_idx, np.int8), card_boxes=boxes.reshape(units, FRAMES_PER_UNIT, 4),
        turns=tuple(turns), user_stops=tuple(s for s in stops if s < units),
        answers=tuple(a for a in answers if a[1] < units), barge_ins=tuple(barges), meta=meta)
