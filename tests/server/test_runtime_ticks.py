"""The pair's tick (server/runtime/ticks.py): the units its calls' clocks make due at one moment
meet in one batched tick; a call late by more than the wait gets its last frames held and
silence, and its unit of that tick is then refused (it never trails by a tick); a call with no
unit yet, or a closing one, holds nothing up; an idle slot is black and silent; a tick runs at
the lowest quality asked."""
from __future__ import annotations

import numpy as np

from server.runtime.ticks import TickAssembler, Unit

SHAPE, SAMPLES, WAIT, P = (4, 2, 3, 3), 5, 0.08, 0.16


def unit(n: int, value: int, due_tick: int, at: float, rung: int = 0, text: bytes = b"") -> Unit:
    """Unit n of a call, due at tick `due_tick` of the pair's grid, handed over at `at`."""
    return Unit(n, np.full((1, *SHAPE), value, np.uint8), np.full((1, SAMPLES), value / 100, np.float32),
                text, rung, at, due=P * (due_tick + 1))


def test_the_units_due_together_meet_in_one_tick() -> None:
    a = TickAssembler(3, SHAPE, SAMPLES, WAIT)
    media = {0: True, 2: False}  # whose clock has started (its first media came)
    a.join(0, lambda: media[0]), a.join(2, lambda: media[2])
    [t] = a.put(0, unit(0, 10, 0, at=0.16), 0.16)  # slot 2 has no media yet: not waited for
    assert t.units == {0: 0} and (t.frames[2] == 0).all()
    media[2] = True
    assert a.put(0, unit(1, 11, 1, at=0.32), 0.32) == []  # now it is
    [t] = a.put(2, unit(0, 20, 1, at=0.33, rung=2, text=b"hi"), 0.33)
    assert (t.tick, t.units, t.rung, t.texts) == (1, {0: 1, 2: 0}, 2, [b"", b"", b"hi"])
    assert (t.frames[0] == 11).all() and (t.frames[2] == 20).all() and (t.frames[1] == 0).all()
    assert np.allclose(t.audio[0], 0.11) and np.allclose(t.audio[2], 0.20) and (t.audio[1] == 0).all()
    assert a.put(2, unit(1, 21, 1, at=0.40), 0.40) is None  # due in a tick that has gone: refused


def test_a_late_call_is_filled_in_after_the_wait_and_skips_that_unit() -> None:
    a = TickAssembler(2, SHAPE, SAMPLES, WAIT)
    a.join(0, lambda: True), a.join(1, lambda: True)
    assert a.put(1, unit(0, 20, 0, 0.16), 0.16) == []
    [t] = a.put(0, unit(0, 10, 0, 0.16), 0.16)
    assert t.units == {0: 0, 1: 0}
    assert a.put(0, unit(1, 11, 1, 0.32), 0.32) == []
    assert a.due(0.32 + WAIT - 0.01) == []  # within the wait: nothing
    [filled] = a.due(0.32 + WAIT + 1e-9)
    assert filled.units == {0: 1}  # slot 1's output of this tick is nobody's
    assert (filled.frames[1] == 20).all() and (filled.audio[1] == 0).all()  # its frames held, silence
    assert a.put(1, unit(1, 21, 1, 0.45), 0.45) is None  # its unit of that tick: refused
    assert a.put(1, unit(1, 22, 2, 0.48), 0.48) == []  # its next one is in step again
    [t] = a.put(0, unit(2, 12, 2, 0.48), 0.48)
    assert t.units == {0: 2, 1: 1} and (t.frames[1] == 22).all()


def test_a_closing_call_holds_nothing_up_and_says_when_its_units_are_all_in_ticks() -> None:
    a = TickAssembler(2, SHAPE, SAMPLES, WAIT)
    a.join(0, lambda: True), a.join(1, lambda: True)
    a.put(0, unit(0, 10, 0, 0.16), 0.16), a.put(1, unit(0, 20, 0, 0.16), 0.16)
    assert a.put(1, unit(1, 21, 1, 0.17), 0.17) == [] and a.put(1, unit(2, 22, 2, 0.18), 0.18) == []  # ahead
    assert a.close(1) is False and not a.drained(1)  # two of its units wait
    [t] = a.put(0, unit(1, 11, 1, 0.32), 0.32)
    assert t.units == {0: 1, 1: 1} and not a.drained(1)
    [t] = a.put(0, unit(2, 12, 2, 0.48), 0.48)
    assert t.units == {0: 2, 1: 2} and a.drained(1)
    [t] = a.put(0, unit(3, 13, 3, 0.64), 0.64)  # slot 1 closing: not waited for
    assert t.units == {0: 3}
    a.leave(1)
    [t] = a.put(0, unit(4, 14, 4, 0.80), 0.80)
    assert t.units == {0: 4} and (t.frames[1] == 0).all() and t.tick == 4
    a.reset()
    assert a.next_tick == 0
