"""A test double of server.engine.Engine for the front end's tests: no model, no processes.

Each submitted unit comes back `delay_s` later as four solid frames whose colour is picked
by the unit index, 160 ms of a 440 Hz tone, and the caption "unit <n>" (or "heard: <text>"
for the unit after a typed message). Everything runs on the test's event loop.
"""
from __future__ import annotations

import asyncio
import time

import numpy as np

from model.streaming import Character
from server.engine import AtCapacity
from server.runtime.messages import UnitOutput
from server.runtime.session import OutputQueue, SessionEnd, SessionEnded
from server.runtime.unit_clock import UnitClock

RATE, SAMPLES = 24_000, 3840
TONE = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLES) / RATE)).astype(np.float32)


def unit_colour(unit: int) -> tuple[int, int, int]:
    """The colour of unit `unit`'s frames: a test reads the unit back from a decoded frame."""
    return ((unit * 53) % 256, (unit * 101 + 60) % 256, (unit * 29 + 120) % 256)


def fake_output(unit: int, frames: np.ndarray, audio: np.ndarray, caption: str, s2s: float,
                ready: float) -> UnitOutput:
    """A session's output for the front end, without the model's fields."""
    none = np.zeros(0, np.float32)
    return UnitOutput(0, unit, np.zeros(0, np.int64), none, none, frames, audio, clock_unit=unit,
                      caption=caption, signal_to_signal_s=s2s, ready_at=ready)


class FakeSession:
    def __init__(self, name: str, width: int, height: int, delay_s: float, on_free: "FakeEngine"):
        self.name, self.clock = name, UnitClock()  # started by the front end with the first media
        self.outputs: OutputQueue[UnitOutput] = OutputQueue(8)
        self.end: SessionEnd | None = None
        self.submitted: list[int] = []
        self.inputs: list[tuple[np.ndarray, np.ndarray]] = []  # what the front end handed over
        self.texts: list[str] = []
        self._w, self._h, self._delay, self._engine = width, height, delay_s, on_free
        self._pending_text: str | None = None

    def submit(self, frames: np.ndarray, audio: np.ndarray, clock_unit: int | None = None) -> int | None:
        assert frames.shape == (1, 4, self._h, self._w, 3) and frames.dtype == np.uint8, frames.shape
        assert audio.shape == (1, SAMPLES) and audio.dtype == np.float32, audio.shape
        assert clock_unit is not None
        if self.end is not None:
            raise SessionEnded(self.end.reason)
        self.submitted.append(clock_unit)
        self.inputs = (self.inputs + [(frames, audio)])[-8:]
        asyncio.get_running_loop().call_later(self._delay, self._produce, clock_unit, time.monotonic())
        return len(self.submitted) - 1

    def _produce(self, unit: int, t_in: float) -> None:
        if self.end is not None:
            return
        frames = np.empty((4, self._h, self._w, 3), np.uint8)
        frames[:] = unit_colour(unit)
        text, self._pending_text = (f"heard: {self._pending_text}" if self._pending_text else f"unit {unit}"), None
        now = time.monotonic()
        self.outputs.put(fake_output(unit, frames, TONE.copy(), text, now - t_in, now))

    def submit_text(self, text: str) -> bool:
        self.texts.append(text)
        self._pending_text = text
        return True

    def close(self) -> None:
        self.finish(True, "closed after its last unit")

    def finish(self, ok: bool, reason: str) -> None:
        if self.end is None:
            self.end = SessionEnd(ok, reason, time.monotonic(), len(self.submitted), 0, 0)
            self._engine.sessions.pop(self.name, None)


class FakeEngine:
    """Engine protocol over FakeSession; `fail_session()` ends a session as a worker fault would."""

    def __init__(self, width: int, height: int, capacity: int = 1, delay_s: float = 0.01):
        self.width, self.height, self.capacity, self.delay_s = width, height, capacity, delay_s
        self.ready = False
        self.sessions: dict[str, FakeSession] = {}
        self.started: list[FakeSession] = []
        self.kv_cache_tokens = 0
        self.margins: list = []  # nothing to measure: no model
        self.healthy = True

    @property
    def active(self) -> int:
        return len(self.sessions)

    @property
    def available(self) -> int:
        return self.capacity - self.active if self.ready else 0

    async def start(self) -> None:
        self.ready = True

    async def start_session(self, character: Character) -> FakeSession:
        if self.active >= self.capacity:
            raise AtCapacity(f"all {self.capacity} call slot(s) are in use", retry_after_s=2)
        s = FakeSession(f"fake.{len(self.started) + 1}", self.width, self.height, self.delay_s, self)
        self.sessions[s.name] = s
        self.started.append(s)
        return s

    def fail_session(self, name: str, reason: str) -> None:
        self.sessions[name].finish(False, reason)

    async def stop(self) -> None:
        for s in list(self.sessions.values()):
            s.finish(False, "the daemon is shutting down")
        self.ready = False
