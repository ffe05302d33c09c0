"""One session (one call) as the supervisor's caller sees it: hand input units in, take decoded
units out of a bounded queue, learn how and why it ended.

Bounds, so that nothing grows with a slow consumer or a slow pair:
  outputs  an OutputQueue of `output_queue` units; when full the oldest is dropped and counted
  inputs   at most `max_lag_units` units handed over without their output back; one more and
           the session ends ("fell behind") instead of queueing
The per-unit record (both roles' stages, transfers, signal-to-signal, deadline misses) is
assembled here from the thinker's UnitOutput and the performer's SolveReport.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np

from server.runtime.messages import SolveReport, UnitOutput
from server.runtime.timings import DOWN, PERFORMER, THINKER, UP, RecordSink, Transfer, UnitRecord
from server.runtime.unit_clock import UnitClock

T = TypeVar("T")


class OutputQueue(Generic[T]):
    """A bounded FIFO that never blocks its producer: when full, the oldest item is dropped."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"output queue size must be >= 1, got {maxsize}")
        self._items: deque[T] = deque()
        self.maxsize, self.dropped = maxsize, 0
        self._cond = threading.Condition()

    def put(self, item: T) -> None:
        with self._cond:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, or None if none came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            return self._items.popleft()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


@dataclass
class _Partial:
    """Half a UnitRecord: the thinker's output and the performer's report arrive separately."""
    t_input: float
    out: UnitOutput | None = None
    rep: SolveReport | None = None
    s2s: float = 0.0


class SessionEnded(RuntimeError):
    """Raised by Session.submit once the session is over; the message is the reason."""


@dataclass
class SessionEnd:
    ok: bool  # True: closed after its last unit; False: a fault or a bound ended it
    reason: str
    detected_at: float  # time.monotonic() when the supervisor decided it
    units_in: int
    units_out: int
    dropped_outputs: int
    deadline_misses: dict[str, int] = field(default_factory=dict)


class Session:
    """Created by Supervisor.open_session; thread-safe against the supervisor's monitor."""

    def __init__(self, sid: int, clock: UnitClock,
                 send_input: Callable[[int, np.ndarray, np.ndarray, bytes], None],
                 request_end: Callable[["Session"], None], sink: RecordSink | None,
                 output_queue: int, max_lag_units: int):
        self.id, self.clock = sid, clock
        self.outputs: OutputQueue[UnitOutput] = OutputQueue(output_queue)
        self.max_lag_units = max_lag_units
        self._send_input, self._request_end, self._sink = send_input, request_end, sink
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self.end: SessionEnd | None = None
        self.units_in = self.units_out = 0
        self.misses = {THINKER: 0, PERFORMER: 0}
        self._partial: dict[int, _Partial] = {}  # units in flight only: bounded by max_lag_units

    # -- the caller's side ------------------------------------------------------------------
    def submit(self, frames: np.ndarray, audio: np.ndarray, text: bytes = b"") -> int:
        """Hand over the next complete input unit (frames (1, 4, 3, H, W), audio (1, samples),
        float32 in [-1, 1]; `text`, UTF-8 typed since the last unit); returns its unit index.
        Raises SessionEnded once it is over."""
        with self._lock:
            if self.end is not None:
                raise SessionEnded(self.end.reason)
            n, lag = self.units_in, self.units_in - self.units_out
            if lag >= self.max_lag_units:
                reason = (f"fell behind: {lag} units handed over without output "
                          f"(max_lag_units={self.max_lag_units}); the pair is slower than real time")
                self._finish(False, reason)
            else:
                self.units_in += 1
                self._partial[n] = _Partial(t_input=time.monotonic())
        if self.end is not None:
            self._request_end(self)
            raise SessionEnded(self.end.reason)
        self._send_input(n, frames, audio, text)
        return n

    def close(self, timeout: float = 30.0) -> SessionEnd:
        """No more input: the pair finishes the units handed over, then the session ends."""
        if self.end is None:
            self._request_end(self)
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> SessionEnd:
        if not self._ended.wait(timeout):
            raise TimeoutError(f"session {self.id} has not ended within {timeout} s "
                               f"({self.units_out}/{self.units_in} units out)")
        assert self.end is not None
        return self.end

    # -- the monitor's side -----------------------------------------------------------------
    def on_output(self, out: UnitOutput) -> None:
        now = time.monotonic()
        with self._lock:
            if self.end is not None and not self.end.ok:
                return  # a session ended by a fault or a bound delivers nothing more
            self.units_out += 1
            p = self._partial[out.unit]
            p.out, p.s2s = out, now - p.t_input
            self._complete(out.unit)
        self.outputs.put(out)

    def on_report(self, rep: SolveReport) -> None:
        with self._lock:
            if rep.unit in self._partial:
                self._partial[rep.unit].rep = rep
                self._complete(rep.unit)

    def _complete(self, unit: int) -> None:
        """Once both halves of a unit are in: count deadline misses, hand the record on."""
        p = self._partial[unit]
        if p.out is None or p.rep is None:
            return
        del self._partial[unit]
        o, r = p.out, p.rep
        late = {THINKER: self.clock.is_late(unit, o.shipped_ns * 1e-9),
                PERFORMER: self.clock.is_late(unit, r.sent_ns * 1e-9)}
        for role, is_late in late.items():
            self.misses[role] += is_late
        if self._sink is not None:
            self._sink(UnitRecord(
                self.id, unit, {THINKER: dict(o.stages), PERFORMER: dict(r.stages)},
                {DOWN: Transfer(r.rows_bytes, r.rows_seconds), UP: Transfer(o.latents_bytes, o.latents_seconds)},
                p.s2s, late, p.t_input))

    def finish(self, ok: bool, reason: str) -> None:
        with self._lock:
            self._finish(ok, reason)

    def _finish(self, ok: bool, reason: str) -> None:
        if self.end is None:
            self.end = SessionEnd(ok, reason, time.monotonic(), self.units_in, self.units_out,
                                  self.outputs.dropped, dict(self.misses))
            self._ended.set()

