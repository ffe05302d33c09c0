"""`duplex eval model` (bench/conversation_eval.py): the judges pass the ground truth and fail
what misbehaves, and the eval plays conversations through the streaming API as the daemon does.
Needs espeak-ng, pocketsphinx and PyAV (tests/missing.py: CI fails without them)."""
from __future__ import annotations

import argparse
import importlib.util

import numpy as np
import pytest

from bench.conversation_eval import (Played, RungNotInLadder, answer_spans, evaluate, judge, oracle, pick_rungs,
                                     portrait_u8, rung_choice, summarise)
from model.config import PAD, demo
from model.data import Synth, conversation, espeak_available
from model.flow import Rung, quality_ladder
from tests.missing import missing

CONVERSATIONS, UNITS = 20, 64  # as `duplex eval model` runs by default


@pytest.fixture(scope="module")
def world():
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    for module, how in (("pocketsphinx", "pip install -e '.[eval]'"), ("av", "pip install -e '.[serve]'")):
        if importlib.util.find_spec(module) is None:
            missing(f"{module} is not installed ({how})")
    from server.frontend.characters import load_character
    from server.settings import SHIPPED_CHARACTERS
    cfg, synth = demo(), Synth()
    episodes = [conversation(seed, cfg, "heldout", UNITS, synth=synth) for seed in range(CONVERSATIONS)]
    images = {cid: portrait_u8(load_character(SHIPPED_CHARACTERS / cid, cfg).character) for cid in ("ada", "bram")}
    return cfg, episodes, images


def run(world, behave) -> dict:
    cfg, episodes, images = world
    return summarise([judge(ep, behave(ep), cfg, images[ep.character]) for ep in episodes])


def test_the_ground_truth_passes_every_target(world) -> None:
    s = run(world, oracle)
    assert all(s["passed"].values()) and s["caption_answers"] == 1.0, s
    assert s["counts"]["answers"] >= 6 and s["counts"]["barge_ins"] >= 1, s["counts"]


def test_a_character_that_says_nothing_fails_what_needs_an_answer(world) -> None:
    cfg, _, images = world

    def silent(ep) -> Played:  # the portrait, still, and silence
        frames = np.broadcast_to(images[ep.character], ep.char_frames.shape).copy()
        return Played(np.full_like(ep.text, PAD), np.zeros(ep.char_audio.size, np.float32), frames)
    s = run(world, silent)
    assert not s["passed"]["answers"] and not s["passed"]["captions_cer"] and s["caption_answers"] < 0.5, s
    # each answer is kept as planned, captioned and heard: nothing captioned, nothing heard
    ep = next(e for e in world[1] if answer_spans(e))
    asked = judge(ep, silent(ep), cfg, images[ep.character])["asked"]
    assert [a["planned"] for a in asked] == [t.spoken for t, _ in answer_spans(ep)]
    assert all(a["captions"] == "" and a["heard"] is None for a in asked), asked
    assert not s["passed"]["turn_median"] and not s["passed"]["lip_sync"], s
    assert s["passed"]["listening"] and s["passed"]["face_frames"], s


def test_a_character_that_talks_over_the_user_fails_listening_and_barge_in(world) -> None:
    def never_stops(ep) -> Played:  # its answers, and a voice under the user's too
        p = oracle(ep)
        return Played(p.text, p.audio + 0.05 * np.sin(np.arange(p.audio.size) * 0.06).astype(np.float32), p.frames)
    s = run(world, never_stops)
    assert not s["passed"]["listening"] and not s["passed"]["barge_in"], s


def test_noise_frames_are_not_a_face(world) -> None:
    def noise(ep) -> Played:
        p = oracle(ep)
        g = np.random.default_rng(0)
        return Played(p.text, p.audio, g.integers(0, 256, p.frames.shape, dtype=np.uint8))
    s = run(world, noise)
    assert s["face_frames"] == 0.0 and not s["passed"]["lip_sync"], s


def test_the_eval_plays_conversations_through_the_streaming_api(world) -> None:
    """Seeded untrained weights, one short conversation at the lowest rung: every measurement
    is made, and an untrained model passes neither answers nor captions."""
    result, (ep, played), cfg = evaluate("dummy", conversations=1, units=24, rungs="lowest")
    (rung, r), = result["rungs"].items()
    assert rung.startswith("1 ")
    assert played.audio.shape == (24 * cfg.audio.samples_per_unit,)
    assert played.frames.shape == (24, 4, cfg.video.height, cfg.video.width, 3)
    assert r["summary"]["counts"]["frames"] == 96
    assert not r["summary"]["passed"]["answers"] and not r["summary"]["passed"]["captions_cer"]


def test_teacher_text_puts_the_episodes_own_words_in_the_text_slots(world) -> None:
    """--teacher-text: the untrained model's captions are then the episode's text exactly."""
    result, (ep, played), _ = evaluate("dummy", conversations=1, units=24, rungs="lowest", teacher_text=True)
    (r,) = result["rungs"].values()
    assert result["teacher_text"] and np.array_equal(played.text, ep.text)
    assert r["summary"]["captions_cer"] in (None, 0.0)


def test_rungs_are_picked_by_name_or_by_euler_steps_and_a_missing_one_is_named() -> None:
    """The served rung (2 Euler steps of a 4-step ladder) is evaluated without editing the
    checkpoint's config; a rung the ladder lacks is an error that lists the ladder."""
    ladder = quality_ladder(4, "heun")
    assert pick_rungs(ladder, "all") == list(ladder)
    assert pick_rungs(ladder, "top") == [Rung(4, "heun")] and pick_rungs(ladder, "lowest") == [Rung(1, "euler")]
    assert pick_rungs(ladder, "2") == [Rung(2, "euler")]
    with pytest.raises(RungNotInLadder, match="4 heun, 4 euler, 3 euler, 2 euler, 1 euler"):
        pick_rungs(ladder, "5")
    assert rung_choice("2") == "2"
    for bad in ("0", "two", "best"):
        with pytest.raises(argparse.ArgumentTypeError):
            rung_choice(bad)
