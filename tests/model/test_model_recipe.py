"""`duplex train --stage model` in miniature (the `tiny` preset, short conversations): both
losses fall, the codec stays frozen, and a killed run resumes exactly where it stopped.
Needs espeak-ng and PyAV (tests/missing.py: CI fails without them)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import tiny
from model.data import Synth, conversation, espeak_available
from model.duplex import build_model
from model.model_recipe import ModelRecipe, batch_at, crop_start, step_seeds, train
from model.run import STATE
from tests.missing import missing

SMALL = dict(units=8, batch=1, warmup=5, lr=3e-3, threads=1, checkpoint_s=1e9)


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    if importlib.util.find_spec("av") is None:
        missing("PyAV is not installed: pip install -e '.[serve]'")
    return save_checkpoint(build_model(tiny(), seed=3), tmp_path_factory.mktemp("codec"))


def test_both_losses_fall_and_the_codec_stays_as_it_was(codec: Path, tmp_path: Path) -> None:
    summary = train(ModelRecipe(codec=codec, out=tmp_path, steps=60, **SMALL))
    history = torch.load(tmp_path / STATE, weights_only=False)["history"]
    first, last = history[0], history[-1]
    assert summary["step"] == 60
    assert last["text"] < 0.5 * first["text"], (first, last)
    assert last["flow"] < first["flow"], (first, last)
    before, after = load_checkpoint(codec).vae.state_dict(), load_checkpoint(tmp_path / "checkpoint").vae.state_dict()
    assert all(torch.equal(before[k].half(), after[k]) for k in before)  # shipped in float16


def test_a_step_trains_on_answers_and_scores_only_units_with_a_full_window(codec: Path) -> None:
    """Crops end just after one of the character's answers (or are a conversation's start);
    the first window of units of a later crop has less context than a call: not scored."""
    model = load_checkpoint(codec)
    r = ModelRecipe(codec=codec, units=8, episode_units=24, batch=2)
    synth, window = Synth(), model.cfg.window_units
    seen_crop = False
    for step in range(6):
        episodes = [conversation(s, model.cfg, "train", 24, synth=synth) for s in step_seeds(0, step, 2)]
        conv = batch_at(model, r, synth, step, torch.device("cpu"))
        for e, scored, text in zip(episodes, conv.scored, conv.text):
            start = crop_start(e, 8, r.p_start)
            assert torch.equal(text, torch.from_numpy(e.text[start:start + 8]))
            if start == 0:
                assert scored.all()
            else:
                seen_crop = True
                ends = [t.end_unit for t in e.turns if t.speaker == "character" and t.intent != "greet"]
                assert any(0 <= start + 8 - end <= 3 for end in ends), (start, ends)
                assert not scored[:window].any() and scored[window:].all()
    assert seen_crop


def test_a_killed_run_resumes_where_it_stopped(codec: Path, tmp_path: Path) -> None:
    whole = train(ModelRecipe(codec=codec, out=tmp_path / "whole", steps=4, **SMALL))
    train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, stop_after=2, **SMALL))  # "killed"
    parts = train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, **SMALL))
    assert parts["step"] == whole["step"] == 4
    a = torch.load(tmp_path / "whole" / STATE, weights_only=False)["model"]
    b = torch.load(tmp_path / "parts" / STATE, weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
