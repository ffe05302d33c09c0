"""`duplex eval voice` (bench/voice_eval.py): the judge of its sampled voice hears every answer in
the conversations' own audio and none in silence; the eval runs end to end on a checkpoint and
writes its figures. Needs espeak-ng, pocketsphinx and PyAV (tests/missing.py: CI fails without)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench import voice_eval
from bench.conversation_eval import answer_spans
from bench.voice_eval import answers_heard, eval_main, words_read
from model.checkpoint import save_checkpoint
from model.config import PAD, demo, tiny
from model.data import Synth, conversation, espeak_available
from model.duplex import build_model
from tests.missing import missing


@pytest.fixture(scope="module")
def synth() -> Synth:
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    for module, how in (("pocketsphinx", "pip install -e '.[eval]'"), ("av", "pip install -e '.[serve]'")):
        if importlib.util.find_spec(module) is None:
            missing(f"{module} is not installed ({how})")
    return Synth()


def test_the_judge_hears_each_answer_in_the_true_audio_and_none_in_silence(synth: Synth) -> None:
    cfg = demo()
    episodes = [conversation(seed, cfg, "heldout", 64, synth=synth) for seed in range(3)]
    spu, rate = cfg.audio.samples_per_unit, cfg.audio.sample_rate
    true = [h for ep in episodes for h in answers_heard(ep, ep.char_audio.reshape(-1), spu, rate)]
    silent = [h for ep in episodes for h in answers_heard(ep, np.zeros(ep.char_audio.size, np.float32), spu, rate)]
    assert len(true) >= 2 and all(true) and not any(silent), (true, silent)


def test_the_eval_runs_on_a_checkpoint_and_writes_its_figures(synth: Synth, tmp_path: Path) -> None:
    folder = save_checkpoint(build_model(tiny(), seed=3), tmp_path / "ckpt")
    out = tmp_path / "voice.json"
    assert eval_main(["--checkpoint", str(folder), "--conversations", "1", "--units", "24", "--steps", "1",
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["flow_error"]) == {"voiced t=0.7", "silent t=0.7", "voiced t=0.95", "silent t=0.95"}
    assert all(math.isfinite(v) and v > 0 for v in result["flow_error"].values()), result
    assert result["preset"] == "tiny" and result["commit"]


def test_words_read_says_whether_each_answer_is_chosen_and_its_colour_named(synth: Synth, monkeypatch) -> None:
    """A text head that reads the planned bytes chooses every answer and names every colour; one
    that reads another byte where an answer is chosen does not choose it."""
    cfg = demo()
    ep = next(e for e in (conversation(s, cfg, "heldout", 64, synth=synth) for s in range(10))
              if any(t.intent == "colour" for t, _ in answer_spans(e)) and e.card_colour)
    planned = torch.from_numpy(ep.text)
    reads = [F.one_hot(planned.clamp_max(PAD), PAD + 3).float()[None]]
    monkeypatch.setattr(voice_eval, "forward_sequence", lambda *a, **k: SimpleNamespace(logits=reads[0]))
    conv = SimpleNamespace(text=planned[None], resp=None)
    rows = words_read(SimpleNamespace(cfg=cfg), conv, ep)
    assert rows and all(r["chosen"] for r in rows) and all(r.get("colour_word", True) for r in rows)
    colour = next(i for i, (t, _) in enumerate(answer_spans(ep)) if t.intent == "colour")
    turn = answer_spans(ep)[colour][0]
    u, k = ep.text_slots(turn)[len("That card is ")]  # the colour's first byte
    wrong = planned.clone()
    wrong[u, k] = ord("x")
    reads[0] = F.one_hot(wrong.clamp_max(PAD), PAD + 3).float()[None]
    again = words_read(SimpleNamespace(cfg=cfg), conv, ep)
    assert not again[colour]["chosen"] and not again[colour]["colour_word"]
    assert [r["chosen"] for i, r in enumerate(again) if i != colour] == [True] * (len(rows) - 1)
