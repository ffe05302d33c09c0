"""Real time on any machine: the quality controller as a pure function (a lateness series in,
rungs out), and the pair under an injected slow step (the performer sleeps per solver
evaluation, as a slower machine takes): it steps down the ladder, skips stale input past the
lowest rung, never ends the session for slowness, and measures its margin at start-up."""
from __future__ import annotations

import threading
from typing import Iterator

import pytest

from model.config import ModelConfig
from server.runtime.ladder import ControllerConfig, rungs_for
from server.runtime.session import Session
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from tests.server.pair_helpers import TINY, start_session

CFG = ControllerConfig(down_s=0.16, up_s=0.128, patience=4, max_patience=16)
LOW, LATE, OK, MID = 3, 0.25, 0.10, 0.14  # the lowest rung's index; lateness in seconds


def _series(values: list[float], rungs_run: list[int]) -> list[tuple[float, int]]:
    return list(zip(values, rungs_run))


def test_a_late_unit_steps_down_at_once_and_late_units_at_lower_rungs_keep_going_down() -> None:
    assert rungs_for(_series([LATE, LATE, LATE, LATE, LATE], [0, 1, 2, 3, 3]), LOW, CFG) == [1, 2, 3, 3, 3]


def test_late_units_already_in_flight_at_a_higher_rung_do_not_step_down_twice() -> None:
    # units 1 and 2 were handed over at rung 0 before unit 0's lateness moved the rung to 1
    assert rungs_for(_series([LATE, LATE, LATE, LATE], [0, 0, 0, 1]), LOW, CFG) == [1, 1, 1, 2]


def test_it_climbs_one_rung_only_after_patience_calm_units_at_the_current_rung() -> None:
    got = rungs_for(_series([LATE] + [OK] * 9, [0] + [1] * 9), LOW, CFG)
    assert got == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]  # up to 0 at the 4th calm unit at rung 1


def test_lateness_between_the_thresholds_holds_the_rung() -> None:
    assert rungs_for(_series([LATE] + [MID] * 20, [0] + [1] * 20), LOW, CFG) == [1] * 21


def test_a_climb_that_does_not_hold_doubles_the_patience() -> None:
    # down to 1; 4 calm -> up to 0; at rung 0 the unit is late again -> down, patience 8
    series = _series([LATE] + [OK] * 4 + [LATE] + [OK] * 8, [0] + [1] * 4 + [0] + [1] * 8)
    got = rungs_for(series, LOW, CFG)
    assert got[:6] == [1, 1, 1, 1, 0, 1]
    assert got[6:13] == [1] * 7 and got[13] == 0, "the second climb waits 8 calm units, not 4"


def test_a_climb_that_holds_resets_the_patience() -> None:
    series = _series([LATE] + [OK] * 4 + [OK] * 5 + [LATE] + [OK] * 4,
                     [0] + [1] * 4 + [0] * 5 + [0] + [1] * 4)
    got = rungs_for(series, LOW, CFG)
    assert got[4] == got[9] == 0 and got[10] == 1 and got[-1] == 0, got  # 4 calm units again suffice


def test_it_never_goes_below_the_lowest_rung_or_above_the_top() -> None:
    assert rungs_for(_series([LATE] * 10, list(range(4)) + [3] * 6), LOW, CFG)[-1] == LOW
    assert rungs_for(_series([OK] * 30, [0] * 30), LOW, CFG) == [0] * 30


def test_thresholds_that_leave_no_hysteresis_are_refused() -> None:
    with pytest.raises(ValueError, match="up_s .* must be below down_s"):
        ControllerConfig(down_s=0.1, up_s=0.1)


# -- the pair, with an injected slow step ------------------------------------------------------
def _drive(session: Session, cfg: ModelConfig, units: int) -> list[int | None]:
    """Hand unit n over when the clock says it is due, as the front end does; drain outputs."""
    stop = threading.Event()
    reader = threading.Thread(target=lambda: [session.outputs.get(0.05) for _ in iter(stop.is_set, True)],
                              daemon=True)
    reader.start()
    try:
        got = []
        for n in range(units):
            frames, audio = synthetic_unit(cfg, 0, n)
            session.clock.wait_due(n)
            got.append(session.submit(frames, audio, clock_unit=n))
        return got
    finally:
        session.close()
        session.wait(timeout=30)
        stop.set()
        reader.join()


@pytest.fixture
def slow_pair(request: pytest.FixtureRequest) -> Iterator[Supervisor]:
    sup = Supervisor(TINY.model_copy(update={"test_eval_delay_s": request.param, "warmup_units": 3})).start()
    yield sup
    sup.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("slow_pair", [0.07], indirect=True, ids=["70ms-a-solver-step"])
def test_a_pair_too_slow_at_full_quality_steps_down_and_keeps_the_call(slow_pair: Supervisor,
                                                                        tiny_cfg: ModelConfig) -> None:
    # tiny's top rung is 3 Euler steps: 210 ms a unit, more than the 160 ms unit; 1 step fits
    rungs: list[int] = []
    session = slow_pair.open_session(synthetic_character(tiny_cfg), seed=0, timeout=60,
                                     sink=lambda rec: rungs.append(rec.rung))
    got = _drive(session, tiny_cfg, 40)
    end = session.wait(0)
    assert end.ok, end.reason
    assert max(rungs) > 0, "the controller never left the top rung"
    assert end.units_out >= 20, f"only {end.units_out} of 40 units came out"
    assert end.skipped == got.count(None)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("slow_pair", [0.25], indirect=True, ids=["250ms-a-solver-step"])
def test_past_the_lowest_rung_stale_units_are_skipped_and_the_session_goes_on(slow_pair: Supervisor,
                                                                             tiny_cfg: ModelConfig) -> None:
    # even one step (250 ms) is slower than a unit: input must be skipped, never queued
    session = start_session(slow_pair, tiny_cfg)
    got = _drive(session, tiny_cfg, 30)
    end = session.wait(0)
    assert end.ok, end.reason  # a call ends for a fault, its length, the caller or a drain only
    assert session.rung == len(slow_pair.ladder) - 1
    assert end.skipped == got.count(None) > 0
    handed = [n for n in got if n is not None]
    assert handed == list(range(len(handed))) and end.units_out == len(handed) >= 8


@pytest.mark.timeout(90)
@pytest.mark.parametrize("slow_pair", [0.07], indirect=True, ids=["70ms-a-solver-step"])
def test_the_start_up_measure_tells_the_margin_at_the_top_and_the_lowest_rung(slow_pair: Supervisor) -> None:
    top, low = slow_pair.measure()
    assert (top.rung, top.steps, low.rung, low.steps) == (0, 3, len(slow_pair.ladder) - 1, 1)
    assert top.margin < 1 < low.margin, (top, low)  # 3 x 70 ms > 160 ms > 1 x 70 ms
    assert top.cost_ms > 3 * 70 and low.cost_ms > 70
