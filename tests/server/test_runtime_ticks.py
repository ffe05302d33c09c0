"""The pair's tick (server/runtime/ticks.py): the units of sessions on their own clocks meet in
one batched tick; a session late by more than the wait gets its last frames held and silence,
and its late unit goes into the next tick; a session with no unit yet, or a closing one, never
holds a tick up; an idle slot is black and silent; a tick runs at the lowest quality asked."""
from __future__ import annotations

import numpy as np

from server.runtime.ticks import TickAssembler, Unit

SHAPE, SAMPLES, WAIT = (4, 2, 3, 3), 5, 0.08


def unit(n: int, value: int, at: float, rung: int = 0, text: bytes = b"") -> Unit:
    return Unit(n, np.full((1, *SHAPE), value, np.uint8), np.full((1, SAMPLES), value / 100, np.float32),
                text, rung, at)


def test_units_of_every_session_meet_in_one_tick_at_the_latest_phase() -> None:
    a = TickAssembler(3, SHAPE, SAMPLES, WAIT)
    a.join(0), a.join(2)
    [t] = a.put(0, unit(0, 10, 0.0), 0.0)  # slot 2 has no unit yet (no media): not waited for
    assert t.units == {0: 0} and (t.frames[2] == 0).all()
    assert a.put(2, unit(0, 20, 0.10), 0.10) == []  # slot 0 has started: its next unit is waited for
    [t] = a.put(0, unit(1, 11, 0.16), 0.16)
    assert (t.tick, t.units) == (1, {0: 1, 2: 0})
    assert a.put(2, unit(1, 21, 0.26, rung=2, text=b"hi"), 0.26) == []
    [t] = a.put(0, unit(2, 12, 0.32), 0.32)
    assert (t.tick, t.units, t.rung, t.texts) == (2, {0: 2, 2: 1}, 2, [b"", b"", b"hi"])
    assert (t.frames[0] == 12).all() and (t.frames[2] == 21).all() and (t.frames[1] == 0).all()
    assert np.allclose(t.audio[0], 0.12) and np.allclose(t.audio[2], 0.21) and (t.audio[1] == 0).all()


def test_a_late_session_is_filled_in_after_the_wait_and_catches_up() -> None:
    a = TickAssembler(2, SHAPE, SAMPLES, WAIT)
    a.join(0), a.join(1)
    a.put(0, unit(0, 10, 0.0), 0.0), a.put(1, unit(0, 20, 0.05), 0.05)
    [t] = a.put(0, unit(1, 11, 0.16), 0.16)
    assert t.units == {0: 1, 1: 0}
    assert a.put(0, unit(2, 12, 0.32), 0.32) == []
    assert a.due(0.32 + WAIT - 0.01) == []  # within the wait: nothing
    [filled] = a.due(0.32 + WAIT)
    assert filled.units == {0: 2}  # slot 1's output of this tick is nobody's
    assert (filled.frames[1] == 20).all() and (filled.audio[1] == 0).all()  # its frames held, silence
    assert a.put(1, unit(1, 21, 0.45), 0.45) == []  # its late unit waits for the next tick
    [t] = a.put(0, unit(3, 13, 0.48), 0.48)
    assert t.units == {0: 3, 1: 1} and (t.frames[1] == 21).all()


def test_a_closing_session_holds_nothing_up_and_says_when_its_units_are_all_in_ticks() -> None:
    a = TickAssembler(2, SHAPE, SAMPLES, WAIT)
    a.join(0), a.join(1)
    a.put(0, unit(0, 10, 0.0), 0.0), a.put(1, unit(0, 20, 0.05), 0.05), a.put(1, unit(1, 21, 0.1), 0.1)
    assert a.close(1) is False and not a.drained(1)  # two of its units wait
    [t] = a.put(0, unit(1, 11, 0.16), 0.16)
    assert t.units == {0: 1, 1: 0} and not a.drained(1)
    [t] = a.put(0, unit(2, 12, 0.32), 0.32)
    assert t.units == {0: 2, 1: 1} and a.drained(1)
    [t] = a.put(0, unit(3, 13, 0.48), 0.48)  # slot 1 closing: not waited for
    assert t.units == {0: 3}
    a.leave(1)
    [t] = a.put(0, unit(4, 14, 0.64), 0.64)
    assert t.units == {0: 4} and (t.frames[1] == 0).all() and t.tick == 4
    a.reset()
    assert a.next_tick == 0
