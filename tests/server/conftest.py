"""Fixtures of the server tests: the tiny preset and one supervised pair shared by a module's
tests (each start of a pair costs a few seconds of spawning and model building); and `daemon`,
one `duplex serve` a module's tests share, started with the module's PRESET (default `tiny`),
DAEMON_ARGS (flags) and DAEMON_ENV (variables) where it sets them, given READY_S seconds to
say ready (default 90), and stopped cleanly after. Each module starts with the test process's
objects collected and frozen (`settled_collector`)."""
from __future__ import annotations

import gc
from typing import Iterator

import pytest

from model.config import ModelConfig, preset
from server.runtime.supervisor import Supervisor
from tests.server.call_helpers import Daemon
from tests.server.pair_helpers import TINY


@pytest.fixture(scope="module", autouse=True)
def settled_collector() -> None:
    """By the server tests this process holds about a million objects (torch.compile's, of the
    model tests); a full collection of them stalled it 0.78 s and 1.0 s during two call tests of
    a suite run on the 2-core VM, and the in-process test caller's event loop with it: its audio
    then arrives a second late, and a call test fails an arrival-gap check on a stall no browser
    has. As the daemon does once started (serve.py, worker.py): collect, and freeze what is left,
    so that a full collection walks only what the module makes. Never unfrozen: a frozen object
    that becomes cyclic garbage later stays (what a server test makes is small)."""
    gc.collect()
    gc.freeze()


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
