"""The one pair of frame conversions at the model's edge: uint8 RGB on the wire, float in the
model; every level survives the round trip, and a wrong input is a clear error."""
from __future__ import annotations

import pytest
import torch

from model.media import frames_to_model, frames_to_uint8


def test_every_uint8_level_round_trips_exactly_through_the_models_float_frames() -> None:
    levels = torch.arange(256, dtype=torch.uint8)
    frames = levels.view(1, 1, 16, 16, 1).expand(1, 4, 16, 16, 3).contiguous()  # (B, T, H, W, 3)
    model = frames_to_model(frames)
    assert model.shape == (1, 4, 3, 16, 16) and model.min() == -1 and model.max() == 1
    assert torch.equal(frames_to_uint8(model), frames)


def test_frames_that_are_not_uint8_rgb_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="uint8 \\(B, T, H, W, 3\\)"):
        frames_to_model(torch.zeros(1, 4, 3, 8, 8))
