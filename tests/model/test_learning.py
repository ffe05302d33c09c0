"""Learning: a few hundred optimiser steps on one fixed toy batch cut both losses (text
cross-entropy, flow-matching MSE) by more than half, and the training-only probes' too."""
from __future__ import annotations

import pytest
import torch

from model.duplex import build_model
from model.duplex import Latents
from model.data import COLOUR_NAMES
from model.config import PAD
from model.train import PROBE_LOSSES, Labels, Probes, forward_sequence, just_stopped, losses, train_step
from tests.model.synthetic import make_character, make_conversation


def eval_losses(model, conv) -> tuple[float, float]:
    """Mean over fixed draws of times and noise, so the figure does not hang on one draw."""
    model.eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        parts = [losses(model, conv, g, model.cfg.window_units) for _ in range(8)]
    return sum(p["text"].item() for p in parts) / 8, sum(p["flow"].item() for p in parts) / 8


@pytest.mark.timeout(240)
def test_training_steps_cut_text_and_flow_losses_by_more_than_half(cfg) -> None:
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    conv = make_conversation(model, make_character(cfg), units=3, batch=2)
    text0, flow0 = eval_losses(model, conv)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(7)
    for _ in range(200):
        train_step(model, opt, conv, g)
    text1, flow1 = eval_losses(model, conv)
    assert text1 < 0.5 * text0, (text0, text1)
    assert flow1 < 0.5 * flow0, (flow0, flow1)


@pytest.mark.timeout(240)
def test_the_probes_learn_their_labels_through_the_encoder_and_the_transformer(cfg) -> None:
    """Card, voice and intent labels of a toy batch (some units unlabelled): the probes' losses
    fall by more than half, and their gradients reach the encoder and the Transformer."""
    torch.manual_seed(0)
    model = build_model(cfg, seed=0)
    conv = make_conversation(model, make_character(cfg), units=3, batch=2)
    g = torch.Generator().manual_seed(3)
    conv.labels = Labels(card=torch.randint(0, len(COLOUR_NAMES) + 1, (2, 3), generator=g),
                         speaking=torch.randint(0, 2, (2, 3), generator=g).float(),
                         intent=torch.tensor([[-1, 1, 1], [-1, -1, 4]]))
    probes = Probes(cfg)
    first = {k: v.item() for k, v in losses(model, conv, g, cfg.window_units, probes=probes).items()}
    opt = torch.optim.AdamW(list(model.parameters()) + list(probes.parameters()), lr=3e-3, weight_decay=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(100):
        last = train_step(model, opt, conv, g, probes=probes, weights=dict.fromkeys(PROBE_LOSSES, 1.0))
    for key in ("card", "speaking", "intent"):
        assert last[key] < 0.5 * first[key], (key, first, last)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"encoder", "transformer"} <= changed


def test_context_noise_blurs_what_later_units_see_and_nothing_else(cfg) -> None:
    """Unit 0 sees no resp context: its text logits are the same; unit 1's are not; the flow
    targets stay the clean latents (the noisy copies are drawn before the context's noise)."""
    model = build_model(cfg, seed=0).eval()
    conv = make_conversation(model, make_character(cfg), units=3, batch=1)
    t = torch.full((1, 3), 0.5)
    blurred = Latents(*(x + torch.randn_like(x) for x in conv.resp))
    with torch.no_grad():
        clean, _ = forward_sequence(model, conv, conv.resp, t, cfg.window_units)[:2]
        noisy_ctx, _ = forward_sequence(model, conv, conv.resp, t, cfg.window_units, blurred)[:2]
        a = losses(model, conv, torch.Generator().manual_seed(5), cfg.window_units, 0.0)
        b = losses(model, conv, torch.Generator().manual_seed(5), cfg.window_units, 0.6)
    assert torch.equal(clean[:, 0], noisy_ctx[:, 0])
    assert not torch.allclose(clean[:, 1], noisy_ctx[:, 1])
    assert a["text"] != b["text"] and a["flow"] != b["flow"]


def loss_values(model, conv) -> dict[str, float]:
    """Every part of `losses`, for one fixed draw of solver times and noise."""
    with torch.no_grad():
        parts = losses(model, conv, torch.Generator().manual_seed(5), model.cfg.window_units)
    return {k: v.item() for k, v in parts.items()}


def test_the_voice_loss_is_the_audio_flow_error_of_voiced_units_alone(cfg) -> None:
    """conv.voiced marks the units where the character speaks: "voice" is the audio's flow error
    over those (another unit's audio moves "flow", not "voice"); without conv.voiced: no "voice"."""
    model = build_model(cfg, seed=0).eval()
    conv = make_conversation(model, make_character(cfg), units=3, batch=1)

    assert "voice" not in loss_values(model, conv) and "stop" not in loss_values(model, conv)
    conv.voiced = torch.tensor([[False, True, False]])
    a = loss_values(model, conv)
    conv.resp = Latents(conv.resp.video, conv.resp.audio.clone())
    conv.resp.audio[:, 2] += 1.0  # the last unit: nobody's context, not voiced
    b = loss_values(model, conv)
    assert a["voice"] == b["voice"] and a["flow"] != b["flow"]
    conv.resp.audio[:, 1] += 1.0
    assert loss_values(model, conv)["voice"] != a["voice"]


def test_the_stop_loss_covers_the_silent_units_just_after_the_character_speaks(cfg) -> None:
    """just_stopped: the STOP_UNITS silent units after speech, not the silence before it; "stop" is
    the audio's flow error there: a unit it covers moves it; with no speech it is 0."""
    voiced = torch.tensor([[True, True, False, False, False, False, True, False]])
    assert just_stopped(voiced).tolist() == [[False, False, True, True, True, False, False, True]]
    model = build_model(cfg, seed=0).eval()
    conv = make_conversation(model, make_character(cfg), units=3, batch=1)
    conv.voiced = torch.tensor([[True, False, False]])

    a = loss_values(model, conv)["stop"]
    conv.resp = Latents(conv.resp.video, conv.resp.audio.clone())
    conv.resp.audio[:, 2] += 1.0  # a unit just after the speech (the last: nobody's context)
    assert loss_values(model, conv)["stop"] != a
    conv.voiced = torch.tensor([[False, False, False]])
    assert loss_values(model, conv)["stop"] == 0.0


def test_the_words_loss_is_the_text_cross_entropy_over_the_characters_bytes_alone(cfg) -> None:
    """A unit whose text is all PAD leaves "words" alone and moves "text"; without any byte, 0."""
    model = build_model(cfg, seed=0).eval()
    conv = make_conversation(model, make_character(cfg), units=3, batch=1)
    conv.text = torch.full_like(conv.text, PAD)
    conv.text[0, 1, :2] = torch.tensor([ord("h"), ord("i")])

    a = loss_values(model, conv)
    conv.text[0, 2, 0] = ord("x")  # unit 2's first slot: "words" now counts it
    b = loss_values(model, conv)
    assert a["words"] != b["words"] and a["text"] != b["text"]
    conv.text[0, 2, 0] = PAD
    conv.scored = torch.tensor([[True, False, True]])  # the bytes' unit not scored
    assert loss_values(model, conv)["words"] == 0.0


def test_the_choice_loss_is_the_text_cross_entropy_over_the_slots_that_choose_an_answer(cfg) -> None:
    """conv.choosing marks the text slots where an answer is chosen: "choice" is the text
    cross-entropy over those (another byte of the answer moves "words", not "choice"); without
    conv.choosing: no "choice"; with none in a scored unit: 0."""
    model = build_model(cfg, seed=0).eval()
    conv = make_conversation(model, make_character(cfg), units=3, batch=1)
    conv.text = torch.full_like(conv.text, PAD)
    conv.text[0, 1, :2] = torch.tensor([ord("I"), ord(" ")])

    assert "choice" not in loss_values(model, conv)
    conv.choosing = torch.zeros_like(conv.text, dtype=torch.bool)
    conv.choosing[0, 1, 0] = True
    a = loss_values(model, conv)
    conv.text[0, 1, 1] = ord("a")  # a byte that chooses nothing
    b = loss_values(model, conv)
    assert a["choice"] == b["choice"] and a["words"] != b["words"]
    conv.text[0, 1, 0] = ord("T")  # the byte that chooses: another answer
    assert loss_values(model, conv)["choice"] != a["choice"]
    conv.scored = torch.tensor([[True, False, True]])
    assert loss_values(model, conv)["choice"] == 0.0
