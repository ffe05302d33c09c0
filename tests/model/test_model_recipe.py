"""`duplex train --stage model` in miniature (the `tiny` preset, short conversations): both
losses fall, the codec stays frozen, and a killed run resumes exactly where it stopped.
Needs espeak-ng and PyAV (tests/missing.py: CI fails without them)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import tiny
from model.data import COLOUR_NAMES, Synth, conversation, espeak_available
from model.data.tables import CHARACTERS, INTENTS, choice_points
from model.duplex import build_model
from model.model_recipe import ModelRecipe, batch_at, crop_start, labels, step_seeds, train, warm_up_card
from model.train import Probes
from model.run import STATE, add_recipe_flags
from tests.missing import missing

SMALL = dict(units=8, batch=1, warmup=5, lr=3e-3, threads=1, checkpoint_s=1e9, card_steps=2, card_batch=2)


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
    seen_crop, answers_seen = False, 0
    for step in range(6):
        episodes = [conversation(s, model.cfg, "train", 24, synth=synth) for s in step_seeds(0, step, 2)]
        conv = batch_at(model, r, synth, step, torch.device("cpu"))
        for e, scored, text, voiced, choosing in zip(episodes, conv.scored, conv.text, conv.voiced, conv.choosing):
            start = crop_start(e, 8, r.p_start)
            assert torch.equal(text, torch.from_numpy(e.text[start:start + 8]))
            assert torch.equal(voiced, torch.from_numpy(e.char_speaking[start:start + 8]))
            crop, marks = e.crop(start, 8), 0
            for t in crop.turns:  # the choosing bytes of each answer begun in the crop, and no other
                if t.speaker == "character" and t.intent != "greet" and t.start_unit >= 0:
                    slots = crop.text_slots(t)
                    marked = [n for n, s in enumerate(slots) if choosing[s]]
                    assert marked == [n for n in choice_points(CHARACTERS[e.character], t.text) if n < len(slots)]
                    assert [int(text[slots[n]]) for n in marked] == [t.text.encode()[n] for n in marked]
                    answers_seen, marks = answers_seen + 1, marks + len(marked)
            assert choosing.sum() == marks
            if start == 0:
                assert scored.all()
            else:
                seen_crop = True
                ends = [t.end_unit for t in e.turns if t.speaker == "character" and t.intent != "greet"]
                assert any(0 <= start + 8 - end <= 3 for end in ends), (start, ends)
                assert not scored[:window].any() and scored[window:].all()
    assert seen_crop and answers_seen


def test_probe_labels_name_the_card_in_view_and_the_question_being_answered(codec: Path) -> None:
    cfg, synth = load_checkpoint(codec).cfg, Synth()
    blue = conversation(5, cfg, "train", 48, card="blue", synth=synth)
    none = conversation(5, cfg, "train", 48, card=None, synth=synth)
    lab = labels([blue, none])
    in_view = torch.from_numpy((blue.card_boxes[..., 0] >= 0).any(1))
    assert in_view.any()
    assert (lab.card[0][in_view] == COLOUR_NAMES.index("blue")).all()
    assert (lab.card[0][~in_view] == len(COLOUR_NAMES)).all() and (lab.card[1] == len(COLOUR_NAMES)).all()
    assert torch.equal(lab.speaking[0].bool(), torch.from_numpy(blue.user_speaking))
    first_stop = min(t.end_unit for t in blue.turns if t.speaker == "user")
    assert (lab.intent[0, :first_stop] == -1).all()
    answers = [t for t in blue.turns if t.speaker == "character" and t.intent != "greet" and t.start_unit < 48]
    assert answers
    for t in answers:  # each answer is labelled with the question it answers, from its first unit on
        assert lab.intent[0, t.start_unit] == INTENTS.index(t.intent), t


def test_the_card_warm_up_trains_the_video_encoder_and_the_card_probe_only(codec: Path) -> None:
    model, before = load_checkpoint(codec), load_checkpoint(codec).state_dict()
    probes = Probes(model.cfg)
    card = {k: v.clone() for k, v in probes.card.state_dict().items()}
    curve = warm_up_card(model, probes, ModelRecipe(codec=codec, card_steps=3, card_batch=4), torch.device("cpu"))
    assert len(curve) == 3
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("encoder.video.") for k in changed)
    assert not torch.equal(card["weight"], probes.card.weight)


def test_a_killed_run_resumes_where_it_stopped(codec: Path, tmp_path: Path) -> None:
    whole = train(ModelRecipe(codec=codec, out=tmp_path / "whole", steps=4, **SMALL))
    train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, stop_after=2, **SMALL))  # "killed"
    parts = train(ModelRecipe(codec=codec, out=tmp_path / "parts", steps=4, **SMALL))
    assert parts["step"] == whole["step"] == 4
    a = torch.load(tmp_path / "whole" / STATE, weights_only=False)["model"]
    b = torch.load(tmp_path / "parts" / STATE, weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    a = torch.load(tmp_path / "whole" / STATE, weights_only=False)["heads"]
    b = torch.load(tmp_path / "parts" / STATE, weights_only=False)["heads"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_a_compiled_run_trains_as_the_eager_one(codec: Path, tmp_path: Path) -> None:
    eager = train(ModelRecipe(codec=codec, out=tmp_path / "eager", steps=3, **SMALL))
    compiled = train(ModelRecipe(codec=codec, out=tmp_path / "compiled", steps=3, compile=True, **SMALL))
    assert compiled["step"] == eager["step"] == 3
    a = torch.load(tmp_path / "eager" / STATE, weights_only=False)
    b = torch.load(tmp_path / "compiled" / STATE, weights_only=False)
    assert a["model"].keys() == b["model"].keys()  # the checkpoint's names, not the compiler's
    assert max((a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"]) <= 1e-4
    assert [h["text"] for h in a["history"]] == pytest.approx([h["text"] for h in b["history"]], rel=1e-4)


def test_the_recipe_flags_parse_to_the_fields_types() -> None:
    p = argparse.ArgumentParser()
    add_recipe_flags(p, ModelRecipe)
    assert ModelRecipe(**vars(p.parse_args([]))) == ModelRecipe()
    r = ModelRecipe(**vars(p.parse_args(["--compile", "--steps", "5", "--voice-weight", "4", "--out", "x"])))
    assert (r.compile, r.steps, r.voice_weight, r.out) == (True, 5, 4.0, Path("x"))
    assert ModelRecipe(**vars(p.parse_args(["--no-compile"]))).compile is False
