"""Fixtures of the server tests: the tiny preset and one supervised pair shared by a module's
tests (each start of a pair costs a few seconds of spawning and model building); and `daemon`,
one `duplex serve` a module's tests share, started with the module's PRESET (default `tiny`),
DAEMON_ARGS (flags) and DAEMON_ENV (variables) where it sets them, given READY_S seconds to
say ready (default 90), and stopped cleanly after."""
from __future__ import annotations

from typing import Iterator

import pytest

from model.config import ModelConfig, preset
from server.runtime.supervisor import Supervisor
from tests.server.call_helpers import Daemon
from tests.server.pair_helpers import TINY


@pytest.fixture(scope="module")
def tiny_cfg() -> ModelConfig:
    return preset("tiny")


@pytest.fixture(scope="module")
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor(TINY.model_copy(update={"max_lag_units": 64, "output_queue": 64})).start()
    yield sup
    sup.close()


@pytest.fixture(scope="module")
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    m = request.module
    d = Daemon(*getattr(m, "DAEMON_ARGS", ()), preset=getattr(m, "PRESET", "tiny"),
               env=getattr(m, "DAEMON_ENV", None))
    d.wait_ready(getattr(m, "READY_S", 90.0))
    yield d
    assert d.stop() == 0, d.log_text()
