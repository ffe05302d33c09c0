"""Fixtures of the model tests: the tiny preset, a seeded model, a seeded character; and the
GPU marker: tests marked `gpu` need a CUDA device and are skipped, each by name, where none is."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.config import ModelConfig, tiny
from model.duplex import DuplexModel, build_model
from model.streaming import Character
from tests.model.synthetic import make_character

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this folder's `gpu` tests, by name, where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and HERE in item.path.parents:
            item.add_marker(skip)


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny()


@pytest.fixture
def model(cfg: ModelConfig) -> DuplexModel:
    return build_model(cfg, seed=0)


@pytest.fixture
def character(cfg: ModelConfig) -> Character:
    return make_character(cfg)
