"""`duplex eval voice` (bench/voice_eval.py): the judge of its sampled voice hears every answer in
the conversations' own audio and none in silence; the eval runs end to end on a checkpoint and
writes its figures. Needs espeak-ng, pocketsphinx and PyAV (tests/missing.py: CI fails without)."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.voice_eval import answers_heard, eval_main
from model.checkpoint import save_checkpoint
from model.config import demo, tiny
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
