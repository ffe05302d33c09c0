"""The measured start's one line: what the operator learns about this machine, in every case."""
from __future__ import annotations

from server.runtime.supervisor import Margin
from server.serve import describe_margins


def _margins(top: float, low: float) -> list[Margin]:
    return [Margin(rung=0, steps=4, solver="euler", margin=top, cost_ms=160 / top),
            Margin(rung=3, steps=1, solver="euler", margin=low, cost_ms=160 / low)]


def test_a_fast_machine_runs_calls_at_full_quality() -> None:
    line = describe_margins(_margins(2.2, 3.1), "cpu", None)
    assert line == ("real-time margin 2.20x at full quality (4 steps), 3.10x at the lowest rung "
                    "(1 step): calls run at full quality on this machine (preset cpu)")


def test_a_slow_machine_is_told_it_runs_degraded_and_which_preset_would_hold() -> None:
    line = describe_margins(_margins(0.8, 1.9), "cpu", ("tiny", 3.2))
    assert "0.80x at full quality" in line and "calls will run degraded on this machine" in line
    assert "--preset tiny holds 3.2x or more" in line


def test_a_machine_too_slow_even_at_the_lowest_rung_is_told_units_will_be_skipped() -> None:
    assert "degraded and skip units" in describe_margins(_margins(0.4, 0.7), "cpu", None)
