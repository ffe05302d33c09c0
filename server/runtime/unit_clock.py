"""The unit clock: one 160 ms unit after another on `time.monotonic()`, and the deadlines.

The clock starts with the call's first media, not when the session opens: ICE through a slow
TURN server, or a slow first frame, may take seconds after the prefill, and a clock already
running would make the first units overdue at once. A clock is made unstarted, shared by the
session and the front end, and started once (`start`, the first call wins). The calls of one
worker pair run on its grid (`grid`, a clock the pair's first call starts): a call's unit 0
starts at the grid's last boundary before its first media, so every call's units fall due
together and the pair's tick waits for nobody (a call's first unit is shorter, once).

Unit n's input spans [t0 + P n, t0 + P (n + 1)), so it is complete (due) at t0 + P (n + 1).
Each role must hand unit n on (the thinker: its KV rows shipped; the performer: z_n sent)
before the next unit is due, at t0 + P (n + 2): a role that is later than that is still busy
with unit n when unit n + 1 should start, and the pipeline is falling behind. Such a unit is
counted as a deadline miss of that role; it is still served. How far behind the pair may fall
before new input units are skipped is `max_lag_units` (session.py: a bound, not a queue).
This module only does arithmetic on the clock; it never sleeps except in `wait_due`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from model.config import UNIT_SECONDS


@dataclass
class UnitClock:
    t0: float | None = None  # time.monotonic() at the start of unit 0; None until started
    period: float = UNIT_SECONDS
    grid: "UnitClock | None" = None  # the pair's: this clock's units start on its boundaries

    @classmethod
    def started_now(cls, period: float = UNIT_SECONDS) -> "UnitClock":
        return cls(t0=time.monotonic(), period=period)

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def start(self, t0: float) -> None:
        """Unit 0 starts at `t0` (the first media), or at the grid's last boundary before it;
        later calls change nothing."""
        if self.t0 is None:
            if self.grid is not None:
                self.grid.start(t0)
                assert self.grid.t0 is not None
                t0 = self.grid.t0 + self.period * math.floor((t0 - self.grid.t0) / self.period)
            self.t0 = t0

    def due(self, unit: int) -> float:
        """When unit `unit`'s input is complete and handed to the thinker."""
        if self.t0 is None:
            raise RuntimeError(f"unit {unit} has no due time: the unit clock starts with the "
                               f"call's first media and has not started yet")
        return self.t0 + self.period * (unit + 1)

    def deadline(self, unit: int) -> float:
        """By when each role must have handed unit `unit` on (the next unit's due time)."""
        return self.due(unit + 1)

    def is_late(self, unit: int, t: float) -> bool:
        return t > self.deadline(unit)

    def wait_due(self, unit: int) -> float:
        """Sleep until unit `unit` is due; returns how late the wake-up was (seconds, >= 0)."""
        delay = self.due(unit) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        return max(0.0, time.monotonic() - self.due(unit))
