"""Judges of speech that no one here wrote: pocketsphinx (CMU's recogniser, its own en-us
acoustic model, dictionary and language model) and a log-spectral distance.

What separates intelligible speech from a vocoded blur (measured on espeak-ng speech; a
grammar of only the expected phrases let an 8-band noise vocoder score 8/8):
- `grammar_judge`: pocketsphinx restricted to a JSGF grammar that holds every phrase AND a
  minimal-pair distractor of each ("open the gate" / "open the grate"); the picked phrase is
  right only if the speech carries the phoneme that tells the pair apart;
- `open_wer`: open-vocabulary recognition (the en-us language model) against the reference
  text: read beside the clean input's WER, since espeak-ng is hard for it even when clean;
- `log_spectral_distance`: dB distance of the power spectra (no recogniser at all).
`noise_vocoder` is the calibration's poor speech. Pure functions on float arrays in [-1, 1]
at a stated sample rate, and a small CLI (`python -m bench.judges --help`); nothing here
imports the model (the resampling is model/data/speech.py's).
"""
from __future__ import annotations

import argparse
import json
import math
import wave
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from model.data.speech import resample

ASR_RATE = 16_000  # pocketsphinx's en-us acoustic model
DITHER = 1e-3  # RMS of the noise floor under every clip the recogniser hears (see _pcm16)


class Phrase(NamedTuple):
    text: str
    distractor: str  # differs from text by one phoneme of one word


# Each pair differs in one phoneme of one word; every word is in pocketsphinx's cmudict
# (tests/bench/test_judges.py checks both). Order is fixed: the eval takes all of them.
# Dropped after calibration: four pairs pocketsphinx confuses even on clean espeak-ng speech
# in both the en-us and en-us-nyc voices (ship/sheep, hole/pole, fast/vast, cold/gold).
PHRASES: tuple[Phrase, ...] = tuple(Phrase(*p) for p in (
    ("open the gate", "open the grate"),
    ("pick up the red cup", "pick up the red cap"),
    ("the cat sat on the mat", "the cat sat on the map"),
    ("turn on the lamp", "turn on the ramp"),
    ("she bought a new coat", "she bought a new goat"),
    ("please pass the salt", "please pass the malt"),
    ("he ate the pear", "he ate the bear"),
    ("show me the blue card", "show me the blue cart"),
    ("we walked to the park", "we walked to the dark"),
    ("bring me the big box", "bring me the big fox"),
    ("the boat is on the lake", "the goat is on the lake"),
    ("I need a new pen", "I need a new pin"),
    ("put the book on the shelf", "put the hook on the shelf"),
    ("the king wore a ring", "the king wore a wing"),
    ("the fish is in the dish", "the fish is in the ditch"),
    ("read the sign on the wall", "read the line on the wall"),
    ("the rain fell all day", "the pain fell all day"),
    ("he lost his hat", "he lost his bat"),
    ("the van is red", "the fan is red"),
    ("she likes the sea", "she likes the tea"),
    ("fill the bucket with sand", "fill the bucket with land"),
    ("the bell rang twice", "the bell sang twice"),
    ("the road is wet", "the load is wet"),
    ("give me the yellow ball", "give me the yellow wall"),
    ("the mouse ran home", "the house ran home"),
    ("wash the dishes", "watch the dishes"),
    ("the cold wind blew", "the gold wind blew"),
    ("she wrote a long note", "she wrote a long boat"),
    ("the light is green", "the kite is green"),
    ("what color is the car", "what color is the bar"),
    ("the nurse is asleep", "the purse is asleep"),
    ("a bag of rice", "a bag of mice"),
    ("the plane is late", "the plan is late"),
    ("we need more time", "we need more lime"),
    ("the lion has a mane", "the lion has a cane"),
    ("drink some milk", "drink some silk"),
    ("the old clock stopped", "the old block stopped"),
    ("paint the wall white", "paint the wall wide"),
    ("he sat on the chair", "he sat on the share"),
    ("the bread is warm", "the red is warm"),
))


# -- audio ----------------------------------------------------------------------------------

def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM wav -> (mono float32 samples in [-1, 1], rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples; expected 16-bit PCM")
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
        rate, ch = w.getframerate(), w.getnchannels()
    return x.reshape(-1, ch).mean(1), rate


def write_wav(path: str | Path, x: np.ndarray, rate: int) -> None:
    pcm = (np.clip(np.asarray(x, np.float32), -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _pcm16(x: np.ndarray, rate: int) -> bytes:
    """16 kHz PCM for pocketsphinx, with a seeded noise floor at -60 dBFS: digital silence
    (espeak-ng's pauses are exact zeros) breaks its features (the log of zero energy) and it
    then drops whole words."""
    x = resample(x, rate, ASR_RATE)
    x = x + DITHER * np.random.default_rng(0).standard_normal(len(x))
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


# -- pocketsphinx ---------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _dictionary() -> dict[str, list[str]]:
    from pocketsphinx import get_model_path
    words: dict[str, list[str]] = {}
    with open(Path(get_model_path()) / "en-us" / "cmudict-en-us.dict") as f:
        for line in f:
            word, *phones = line.split()
            words.setdefault(word, phones)
    return words


def pronunciation(text: str) -> list[list[str]]:
    """The cmudict phones of each word; KeyError names a word the recogniser cannot hear."""
    d = _dictionary()
    return [d[w] for w in text.lower().split()]


@lru_cache(maxsize=1)
def _open_decoder():
    from pocketsphinx import Decoder
    return Decoder(samprate=ASR_RATE, loglevel="FATAL")


@lru_cache(maxsize=8)
def _grammar_decoder(alternatives: tuple[str, ...]):
    from pocketsphinx import Decoder
    rule = " | ".join(a.lower() for a in alternatives)
    d = Decoder(samprate=ASR_RATE, loglevel="FATAL", lm=None)
    d.add_jsgf_string("phrases", f"#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = {rule};\n")
    d.activate_search("phrases")
    return d


def _recognise(decoder, x: np.ndarray, rate: int) -> str:
    decoder.start_utt()
    decoder.process_raw(_pcm16(x, rate), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return "" if hyp is None else " ".join(hyp.hypstr.split())


def grammar_judge(x: np.ndarray, rate: int, phrases: Sequence[Phrase] = PHRASES) -> str | None:
    """The phrase or distractor pocketsphinx picks for speech x, from a grammar holding every
    phrase and distractor of `phrases`; None when it hears none of them."""
    alternatives = tuple(a for p in phrases for a in (p.text, p.distractor))
    heard = pick(x, rate, tuple(a.lower() for a in alternatives))
    return next((a for a in alternatives if a.lower() == heard), None)


def pick(x: np.ndarray, rate: int, alternatives: Sequence[str]) -> str | None:
    """Which of `alternatives` (lower case, words pocketsphinx knows) pocketsphinx hears in x,
    from a grammar of exactly those; None when it hears none of them."""
    hyp = _recognise(_grammar_decoder(tuple(alternatives)), x, rate)
    return hyp if hyp in alternatives else None


def transcribe(x: np.ndarray, rate: int) -> str:
    """Open-vocabulary recognition with pocketsphinx's en-us language model."""
    return _recognise(_open_decoder(), x, rate)


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word edit distance, reference words), case-insensitive."""
    ref, hyp = reference.lower().split(), hypothesis.lower().split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def open_wer(x: np.ndarray, rate: int, reference: str) -> float:
    """Word error rate of open-vocabulary recognition of x against `reference`."""
    errors, words = word_errors(reference, transcribe(x, rate))
    return errors / max(words, 1)


# -- signal ---------------------------------------------------------------------------------

def _power_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    return np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (T, n_fft / 2 + 1)


def log_spectral_distance(reference: np.ndarray, x: np.ndarray, rate: int,
                          frame_s: float = 0.032) -> float:
    """dB: the RMS over frequency of the difference of the log power spectra, averaged over
    frames (both clips cut to the shorter; a floor 80 dB under the reference's peak)."""
    n = min(len(reference), len(x))
    n_fft = 1 << round(math.log2(frame_s * rate))
    a, b = (_power_spectrogram(y[:n], n_fft, n_fft // 4) for y in (reference, x))
    floor = a.max() * 1e-8 + 1e-12
    la, lb = 10 * np.log10(np.maximum(a, floor)), 10 * np.log10(np.maximum(b, floor))
    return float(np.sqrt(((la - lb) ** 2).mean(-1)).mean())


def noise_vocoder(x: np.ndarray, rate: int, bands: int = 8, seed: int = 0,
                  lo: float = 100.0, hi: float = 7000.0, frame_s: float = 0.064) -> np.ndarray:
    """The classic channel vocoder of cochlear-implant studies: each of `bands` log-spaced
    bands keeps its energy envelope (a Hann window of `frame_s`, hop a quarter of it), its
    fine structure becomes noise (random phase). Speech stays somewhat intelligible to people; it is the calibration's poor speech."""
    rng = np.random.default_rng(seed)
    n_fft = 1 << round(math.log2(frame_s * rate))
    hop = n_fft // 4
    x = np.asarray(x, np.float64)
    pad = np.pad(x, (n_fft, n_fft))
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop] * window
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # (T, F)
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    edges = np.geomspace(lo, min(hi, rate / 2), bands + 1)
    mag = np.zeros_like(power)
    for b0, b1 in zip(edges[:-1], edges[1:]):
        sel = (freqs >= b0) & (freqs < b1)
        mag[:, sel] = np.sqrt(power[:, sel].mean(1, keepdims=True))
    spec = mag * np.exp(2j * np.pi * rng.random(mag.shape))
    out = np.zeros(len(pad))
    norm = np.zeros(len(pad))
    for t, frame in enumerate(np.fft.irfft(spec, n_fft, axis=-1)):
        out[t * hop:t * hop + n_fft] += frame * window
        norm[t * hop:t * hop + n_fft] += window ** 2
    out = out / np.maximum(norm, 1e-3)
    return out[n_fft:n_fft + len(x)].astype(np.float32)


# -- CLI ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.judges", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wav", help="16-bit PCM wav to judge")
    p.add_argument("--reference", help="the words spoken: prints the open-vocabulary WER")
    p.add_argument("--clean", help="the clean wav: prints the log-spectral distance to it")
    args = p.parse_args(argv)
    x, rate = read_wav(args.wav)
    out: dict[str, object] = {"transcript": transcribe(x, rate),
                              "grammar_pick": grammar_judge(x, rate)}
    if args.reference:
        out["wer"] = open_wer(x, rate, args.reference)
    if args.clean:
        ref, ref_rate = read_wav(args.clean)
        out["log_spectral_distance_db"] = log_spectral_distance(resample(ref, ref_rate, rate), x, rate)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
