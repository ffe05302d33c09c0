"""Backpressure: a stalled consumer of outputs keeps a bounded queue (the oldest units are
dropped and counted), and a pair that falls behind skips stale input units (counted) instead
of queueing them without bound or ending the session; the next session is served as usual."""
from __future__ import annotations

import time
from typing import Iterator

import pytest

from model.config import ModelConfig
from server.runtime.session import OutputQueue
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_unit
from tests.server.pair_helpers import TINY, run_units, start_session


def test_output_queue_drops_the_oldest_when_full_and_counts_it() -> None:
    q: OutputQueue[int] = OutputQueue(3)
    for i in range(10):
        q.put(i)
    assert len(q) == 3 and q.dropped == 7
    assert [q.get(0), q.get(0), q.get(0), q.get(0)] == [7, 8, 9, None]


@pytest.fixture(scope="module")
def small_bounds() -> Iterator[Supervisor]:
    sup = Supervisor(TINY.model_copy(update={"output_queue": 4, "max_lag_units": 3})).start()
    yield sup
    sup.close()


@pytest.mark.timeout(60)
def test_stalled_consumer_keeps_a_bounded_output_queue_and_counts_drops(
        small_bounds: Supervisor, tiny_cfg: ModelConfig) -> None:
    session = start_session(small_bounds, tiny_cfg)
    units = 30
    for n in range(units):  # in real time's order, but nobody reads the outputs
        session.submit(*synthetic_unit(tiny_cfg, 0, n))
        while session.units_in - session.units_out >= small_bounds.cfg.max_lag_units:
            time.sleep(0.005)
    session.close()
    end = session.wait(timeout=30)
    assert end.ok, end.reason
    assert end.units_out == units
    assert len(session.outputs) == 4
    assert end.dropped_outputs == units - 4
    assert [session.outputs.get(0).unit for _ in range(4)] == list(range(units - 4, units))


@pytest.mark.timeout(60)
def test_pair_that_falls_behind_skips_stale_input_instead_of_ending_the_session(
        small_bounds: Supervisor, tiny_cfg: ModelConfig) -> None:
    session = start_session(small_bounds, tiny_cfg)
    got = [session.submit(*synthetic_unit(tiny_cfg, 0, n)) for n in range(50)]  # far too fast
    session.close()
    end = session.wait(timeout=30)
    assert end.ok, end.reason  # slowness never ends a session
    handed = [n for n in got if n is not None]
    assert handed == list(range(len(handed))), "the model's unit counter stays dense"
    assert end.skipped == got.count(None) > 0 and end.units_in == end.units_out == len(handed)
    outs = []
    while (o := session.outputs.get(timeout=0)) is not None:
        outs.append(o)
    clock_units = [o.clock_unit for o in outs]  # outputs answer the clock units that were handed over
    assert clock_units == sorted(clock_units) and set(clock_units) <= {c for c, n in enumerate(got) if n is not None}
    _, end2 = run_units(start_session(small_bounds, tiny_cfg), tiny_cfg, 3)
    assert end2.ok, end2.reason
