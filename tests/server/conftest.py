"""Fixtures of the runtime tests: the tiny preset and one supervised pair shared by a module's
tests (each start of a pair costs a few seconds of spawning and model building)."""
from __future__ import annotations

from typing import Iterator

import pytest

from model.config import ModelConfig, preset
from server.runtime.supervisor import Supervisor
from tests.server.pair_helpers import TINY


@pytest.fixture(scope="module")
def tiny_cfg() -> ModelConfig:
    return preset("tiny")


@pytest.fixture(scope="module")
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(TINY.model_copy(update={"max_lag_units": 64, "output_queue": 64})).start()
    yield sup
    sup.close()
