"""Learning: a few hundred optimiser steps on one fixed toy batch cut both losses (text
cross-entropy, flow-matching MSE) by more than half."""
from __future__ import annotations

import pytest
import torch

from model.duplex import build_model
from model.train import losses, train_step
from tests.model.synthetic import make_character, make_conversation


def eval_losses(model, conv) -> tuple[float, float]:
    """Mean over fixed draws of times and noise, so the figure does not hang on one draw."""
    model.eval()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        pairs = [losses(model, conv, g, model.cfg.window_units) for _ in range(8)]
    return sum(p[0].item() for p in pairs) / 8, sum(p[1].item() for p in pairs) / 8


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
