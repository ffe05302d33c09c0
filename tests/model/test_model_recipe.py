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
from model.data import espeak_available
from model.duplex import build_model
from model.model_recipe import ModelRecipe, train
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


def test_a_killed_run_resumes_where_it_stopped(codec: Path, tmp_path: Path) -> None:
    whole = train(ModelRecipe(codec=codec, out=tmp_path / "whole", steps=4, **SMALL))
    train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, stop_after=2, **SMALL))  # "killed"
    parts = train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, **SMALL))
    assert parts["step"] == whole["step"] == 4
    a = torch.load(tmp_path / "whole" / STATE, weights_only=False)["model"]
    b = torch.load(tmp_path / "parts" / STATE, weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
