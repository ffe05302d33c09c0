"""The unit clock and deadline accounting: unit n is due when its 160 ms are over, each role
must hand it on before the next unit is due, and a late unit is counted against the role that
was late while still being served (with fakes for both workers: no processes); the calls of
one pair start on its grid."""
from __future__ import annotations

import numpy as np
import pytest

from model.config import preset
from server.runtime.messages import SolveReport, UnitOutput
from server.runtime.session import Session
from server.runtime.timings import PERFORMER, THINKER, RunStats
from server.runtime.unit_clock import UnitClock

P = 0.16


def test_unit_n_is_due_after_its_160_ms_and_must_be_handed_on_before_the_next_is_due() -> None:
    clock = UnitClock(t0=100.0)
    assert clock.due(0) == pytest.approx(100.16)
    assert clock.due(9) == pytest.approx(101.6)
    assert clock.deadline(9) == pytest.approx(clock.due(10))
    assert not clock.is_late(9, 101.75) and clock.is_late(9, 101.77)


def _output(unit: int, shipped: float) -> UnitOutput:
    z = np.zeros((1, 1), np.float32)
    return UnitOutput(0, unit, np.zeros(3, np.int64), z, z, z, z, {"decode": 0.01},
                      shipped_ns=int(shipped * 1e9))


def _report(unit: int, sent: float) -> SolveReport:
    return SolveReport(0, unit, {"solve": 0.05}, 100, 0.001, int(sent * 1e9))


@pytest.mark.parametrize("late_role", [THINKER, PERFORMER])
def test_a_late_unit_counts_a_miss_for_the_late_role_and_is_still_served(late_role: str) -> None:
    clock = UnitClock(t0=1000.0)
    stats, sent = RunStats(), []
    session = Session(0, "0", clock, preset("tiny").layout, send_input=lambda n, c, f, a, t, r: sent.append(n) is None,
                      request_end=lambda s: None, sink=stats, output_queue=8, max_lag_units=8)
    for n in range(3):
        session.submit(np.zeros(1), np.zeros(1))
    for n in range(3):
        on_time = clock.deadline(n) - 0.01
        late = clock.deadline(n) + 0.01 if n == 1 else on_time
        session.on_report(_report(n, late if late_role == PERFORMER else on_time))
        session.on_output(_output(n, late if late_role == THINKER else on_time))
    assert sent == [0, 1, 2]
    assert session.misses == {THINKER: int(late_role == THINKER), PERFORMER: int(late_role == PERFORMER)}
    assert stats.deadline_misses() == session.misses
    assert [r.late[late_role] for r in stats.records] == [False, True, False]
    assert [session.outputs.get(0).unit for _ in range(3)] == [0, 1, 2]  # nothing skipped


def test_the_calls_of_a_pair_start_on_its_grid_so_their_units_fall_due_together() -> None:
    grid = UnitClock()  # the pair's: its first call starts it
    first, second = UnitClock(grid=grid), UnitClock(grid=grid)
    first.start(100.0)
    assert grid.t0 == first.t0 == 100.0
    second.start(100.55)  # its first media, 3.4 units later: unit 0 starts at the boundary before
    assert second.t0 == pytest.approx(100.48)
    assert second.due(0) == pytest.approx(first.due(3))  # a shorter first unit, never a later one
    second.start(200.0)
    assert second.t0 == pytest.approx(100.48)  # started once
