"""The pair's tick: one input unit of every session slot, batched, for the thinker's one step.

Each session hands its units over on its own unit clock (they start with each call's first
media, so their phases differ); the pair steps all its slots at once. A tick forms:
  - when every session that has handed over a unit has its next one waiting: the sessions'
    units meet at the latest phase among them, so a unit waits at most one unit (160 ms), or
  - when the oldest unit waiting has waited `wait_s`: a session late by more than that gets
    filler in that tick (its last frames held, silence) and its late unit goes into the next.
A session that has not handed over a unit yet (no media yet) never holds a tick up; nor does a
closing one. An idle slot's rows are zeros. A filler unit's output is nobody's: the thinker
steps the slot (one batch), the supervisor drops what comes out of it (`Tick.units` lacks it).
The rung of a tick is the lowest quality any of its units asked for.

A plain class: no pipe, no thread, no clock of its own (`now` is an argument); the supervisor
calls it under its lock and sends the ticks it returns.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Unit:
    """One session's input unit, as handed over."""
    unit: int  # the session's model unit (its n-th unit handed over)
    frames: np.ndarray  # (1, 4, H, W, 3) uint8 RGB
    audio: np.ndarray  # (1, samples_per_unit) float32
    text: bytes
    rung: int
    at: float  # time.monotonic() when it was handed over


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
    waiting: deque[Unit] = field(default_factory=deque)
    held: np.ndarray | None = None  # the last frames handed over: a late unit's filler
    started: bool = False  # has handed over a unit: ticks wait for it from now on
    closing: bool = False


class TickAssembler:
    def __init__(self, slots: int, frame_shape: tuple[int, ...], samples: int, wait_s: float):
        self.slots, self.wait_s = slots, wait_s
        self._frame_shape, self._samples = frame_shape, samples  # one unit's (4, H, W, 3)
        self._live: dict[int, _Slot] = {}
        self.next_tick = 0

    def join(self, slot: int) -> None:
        self._live[slot] = _Slot()

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

    def reset(self) -> None:
        """The pair starts afresh (its last session left, or it was restarted)."""
        self._live.clear()
        self.next_tick = 0

    def put(self, slot: int, unit: Unit, now: float) -> list[Tick]:
        """`slot`'s session hands over `unit`; the ticks that form now (at most a few)."""
        s = self._live[slot]
        s.waiting.append(unit)
        s.started = True
        return self.due(now)

    def due(self, now: float) -> list[Tick]:
        """The ticks that form by `now`: every started session has a unit waiting, or the
        oldest waiting unit has waited `wait_s`."""
        ticks = []
        while True:
            waiting = [s.waiting[0].at for s in self._live.values() if s.waiting]
            if not waiting:
                return ticks
            complete = all(s.waiting for s in self._live.values() if s.started and not s.closing)
            if not (complete or now - min(waiting) >= self.wait_s):
                return ticks
            ticks.append(self._form())

    def _form(self) -> Tick:
        frames = np.zeros((self.slots, *self._frame_shape), np.uint8)
        audio = np.zeros((self.slots, self._samples), np.float32)
        texts, units, rung = [b""] * self.slots, {}, 0
        for slot, s in self._live.items():
            if s.waiting:
                u = s.waiting.popleft()
                frames[slot], audio[slot], texts[slot] = u.frames[0], u.audio[0], u.text
                s.held, units[slot], rung = u.frames[0], u.unit, max(rung, u.rung)
            elif s.held is not None:
                frames[slot] = s.held
        tick = Tick(self.next_tick, frames, audio, texts, rung, units)
        self.next_tick += 1
        return tick
