"""The pair's tick: one input unit of every session slot, batched, for the thinker's one step.

Each session hands its units over on its own unit clock, and the clocks of a pair's calls
start on the pair's grid (unit_clock.py), so their units fall due together: a tick is the
units due at one moment of the grid (`Unit.due`). It forms:
  - when every session whose clock has started has a unit waiting, or
  - when its first unit has waited `wait_s` past its due time: a session later than that gets filler in
    that tick (its last frames held, silence), and its unit due then, when it comes, is not
    taken (the session skips it, as when its pair is behind): it never trails by a tick.
A session whose clock has not started (no media yet) never holds a tick up; nor does a closing
one. An idle slot's rows are zeros. A filler unit's output is nobody's: the thinker
steps the slot (one batch), the supervisor drops what comes out of it (`Tick.units` lacks it).
The rung of a tick is the lowest quality any of its units asked for.

A plain class: no pipe, no thread, no clock of its own (`now` is an argument); the supervisor
calls it under its lock and sends the ticks it returns.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from model.config import UNIT_SECONDS

SAME_TICK_S = 0.25 * UNIT_SECONDS  # due times closer than this are one tick of the grid


@dataclass
class Unit:
    """One session's input unit, as handed over."""
    unit: int  # the session's model unit (its n-th unit handed over)
    frames: np.ndarray  # (1, 4, H, W, 3) uint8 RGB
    audio: np.ndarray  # (1, samples_per_unit) float32
    text: bytes
    rung: int
    at: float  # time.monotonic() when it was handed over
    due: float  # when its clock says it is due: the same for every call of the pair's tick


@dataclass
class Tick:
    tick: int  # the thinker's tick: dense, one per tick sent
    frames: np.ndarray  # (slots, 4, H, W, 3) uint8
    audio: np.ndarray  # (slots, samples_per_unit) float32
    texts: list[bytes]
    rung: int
    units: dict[int, int]  # slot -> the model unit of its session in this tick (filler: absent)


@dataclass
class _Slot:
    started: Callable[[], bool]  # its clock has started: ticks wait for its units
    waiting: deque[Unit] = field(default_factory=deque)
    held: np.ndarray | None = None  # the last frames handed over: a late unit's filler
    closing: bool = False


class TickAssembler:
    def __init__(self, slots: int, frame_shape: tuple[int, ...], samples: int, wait_s: float):
        self.slots, self.wait_s = slots, wait_s
        self._frame_shape, self._samples = frame_shape, samples  # one unit's (4, H, W, 3)
        self._live: dict[int, _Slot] = {}
        self.next_tick = 0
        self._formed = -math.inf  # the due time of the last tick formed

    def join(self, slot: int, started: Callable[[], bool]) -> None:
        """A session in `slot`; `started()`: its clock has started (its units will come)."""
        self._live[slot] = _Slot(started)

    def leave(self, slot: int) -> None:
        self._live.pop(slot, None)

    def close(self, slot: int) -> bool:
        """The session in `slot` hands over nothing more; True once its units are all in ticks."""
        s = self._live[slot]
        s.closing = True
        return not s.waiting

    def drained(self, slot: int) -> bool:
        s = self._live.get(slot)
        return s is None or not s.waiting

    def reset(self, next_tick: int = 0) -> None:
        """The pair starts afresh (its last session left, or it was restarted): a new grid."""
        self._live.clear()
        self.next_tick = next_tick
        self._formed = -math.inf

    def put(self, slot: int, unit: Unit, now: float) -> list[Tick] | None:
        """`slot`'s session hands over `unit`; the ticks that form now (at most a few), or None
        when the tick it is due in has formed already: it is not taken."""
        if unit.due < self._formed + SAME_TICK_S:
            return None
        self._live[slot].waiting.append(unit)
        return self.due(now)

    def due(self, now: float) -> list[Tick]:
        """The ticks that form by `now`: every started session has a unit waiting, or the
        next tick's first unit has waited `wait_s`."""
        ticks = []
        while True:
            first = [s.waiting[0] for s in self._live.values() if s.waiting]
            if not first:
                return ticks
            due = min(u.due for u in first)
            complete = all(s.waiting for s in self._live.values() if s.started() and not s.closing)
            # (from its due time: a unit handed over ahead of its clock makes no one late)
            waited = now - min(max(u.at, u.due) for u in first if u.due < due + SAME_TICK_S)
            if not (complete or waited >= self.wait_s):
                return ticks
            ticks.append(self._form(due))

    def _form(self, due: float) -> Tick:
        frames = np.zeros((self.slots, *self._frame_shape), np.uint8)
        audio = np.zeros((self.slots, self._samples), np.float32)
        texts, units, rung = [b""] * self.slots, {}, 0
        self._formed = due
        for slot, s in self._live.items():
            if s.waiting and s.waiting[0].due < due + SAME_TICK_S:
                u = s.waiting.popleft()
                frames[slot], audio[slot], texts[slot] = u.frames[0], u.audio[0], u.text
                s.held, units[slot], rung = u.frames[0], u.unit, max(rung, u.rung)
            elif s.held is not None:
                frames[slot] = s.held
        tick = Tick(self.next_tick, frames, audio, texts, rung, units)
        self.next_tick += 1
        return tick
