"""Fixtures of the model tests: the tiny preset, a seeded model, a seeded character."""
from __future__ import annotations

import pytest

from model.config import ModelConfig, tiny
from model.duplex import DuplexModel, build_model
from model.streaming import Character
from tests.model.synthetic import make_character


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny()


@pytest.fixture
def model(cfg: ModelConfig) -> DuplexModel:
    return build_model(cfg, seed=0)


@pytest.fixture
def character(cfg: ModelConfig) -> Character:
    return make_character(cfg)
