"""The judges (bench/judges.py): the phrase list is what it claims (40+ minimal pairs the
recogniser's dictionary knows), the arithmetic is right, and the calibration: clean espeak-ng
speech scores >= 90 % on the distractor grammar, an 8-band noise vocoder of it clearly worse
(grammar and open-vocabulary WER). A dozen phrases here; all of them in `duplex eval codec`.
"""
from __future__ import annotations

import numpy as np

from bench.judges import PHRASES, log_spectral_distance, noise_vocoder, word_errors
from tests.missing import missing

RATE = 16_000


def test_there_are_forty_phrases_each_with_a_distinct_distractor() -> None:
    assert len(PHRASES) >= 40
    texts = [p.text.lower() for p in PHRASES] + [p.distractor.lower() for p in PHRASES]
    assert len(set(texts)) == len(texts)


def test_each_distractor_differs_in_one_word_and_is_no_homophone() -> None:
    try:
        from bench.judges import pronunciation
        pronunciation("open")
    except ImportError:
        missing("pocketsphinx is not installed (pip install -e '.[eval]')")
    for p in PHRASES:
        a, b = pronunciation(p.text), pronunciation(p.distractor)
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(changed) == 1, p


def test_word_errors_count_substitutions_insertions_and_deletions() -> None:
    assert word_errors("open the gate", "open the gate") == (0, 3)
    assert word_errors("open the gate", "open a gate now") == (2, 3)
    assert word_errors("open the gate", "") == (3, 3)


def test_log_spectral_distance_is_zero_for_the_same_clip_and_grows_with_damage() -> None:
    g = np.random.default_rng(0)
    x = (np.sin(np.arange(RATE) * 0.05) * 0.3 + 0.01 * g.standard_normal(RATE)).astype(np.float32)
    assert log_spectral_distance(x, x, RATE) == 0.0
    assert log_spectral_distance(x, x + 0.05 * g.standard_normal(RATE).astype(np.float32), RATE) > 3.0


def test_clean_speech_passes_and_a_noise_vocoder_of_it_clearly_fails() -> None:
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        missing("pocketsphinx is not installed (pip install -e '.[eval]')")
    from bench.judges import grammar_judge, open_wer
    from model.data.speech import Synth, espeak_available, speak
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    phrases = PHRASES[:12]
    score, synth = {"clean": [], "vocoder": []}, Synth()
    for p in phrases:
        x = speak(synth, p.text, "en-us", RATE)
        for name, y in (("clean", x), ("vocoder", noise_vocoder(x, RATE))):
            score[name].append((grammar_judge(y, RATE) == p.text, open_wer(y, RATE, p.text)))
    acc = {k: np.mean([c for c, _ in v]) for k, v in score.items()}
    wer = {k: np.mean([w for _, w in v]) for k, v in score.items()}
    assert acc["clean"] >= 0.9, (acc, wer)
    assert acc["vocoder"] <= acc["clean"] - 0.2, (acc, wer)
    assert wer["vocoder"] >= wer["clean"] + 0.2, (acc, wer)
