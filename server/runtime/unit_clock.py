"""The unit clock: one 160 ms unit after another on `time.monotonic()`, and the deadlines.

Unit n's input spans [t0 + P n, t0 + P (n + 1)), so it is complete (due) at t0 + P (n + 1).
Each role must hand unit n on (the thinker: its KV rows shipped; the performer: z_n sent)
before the next unit is due, at t0 + P (n + 2): a role that is later than that is still busy
with unit n when unit n + 1 should start, and the pipeline is falling behind. Such a unit is
counted as a deadline miss of that role; it is still served, never skipped. How far behind the
pair may fall before a session is ended is `max_lag_units` (a bound, not a queue).
This module only does arithmetic on the clock; it never sleeps except in `wait_due`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from model.config import UNIT_SECONDS


@dataclass(frozen=True)
class UnitClock:
    t0: float  # time.monotonic() at the start of unit 0
    period: float = UNIT_SECONDS

    @classmethod
    def start(cls, period: float = UNIT_SECONDS) -> "UnitClock":
        return cls(t0=time.monotonic(), period=period)

    def due(self, unit: int) -> float:
        """When unit `unit`'s input is complete and handed to the thinker."""
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
