"""One session (one call), from the front end to the worker pair: hand input units and typed
text in, take decoded units out of one bounded queue, learn how and why it ended. The front
end's event loop, the bench and the tests all hold this object; none of its methods blocks
except `wait` and the thread-side `outputs.get`.

Real time on any machine (DESIGN: "Real time on any machine"):
  rungs    each unit runs at a rung of the quality ladder (model/flow.py), chosen by the
           controller (ladder.py) from how late the units before it came back on the clock
  skips    at most `max_lag_units` units are in flight (handed over, output not back); an input
           unit that comes when that many are in flight is stale before it could start: it is
           skipped (never handed to the thinker), counted, and the caller's playout holds the
           last frame and plays silence for it. So is a unit that comes after the pair's tick
           it is due in has gone without it (ticks.py: a call more than half a unit late). The
           model's own unit counter stays dense: model unit n is the n-th unit handed over,
           whatever its unit on the clock (`clock_unit`).
  A session ends only when it is closed or for a fault, never for slowness.
Bounds, so that nothing grows with a slow consumer or a slow pair:
  outputs  one OutputQueue of `output_queue` units; when full the oldest is dropped and counted
  inputs   at most `max_lag_units` units in flight, as above; typed text waiting for the text
           slots at most MAX_TYPED_BYTES
Each output is completed here once, on the supervisor's thread: its unit on the clock, rung,
caption, signal-to-signal; the per-unit record (both roles' stages, transfers, deadline
misses) is assembled here from it and the performer's SolveReport.
"""
from __future__ import annotations

import asyncio
import codecs
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, TypeVar

import numpy as np

from model.config import PAD, UnitLayout
from model.flow import Rung

from server.runtime.ladder import ControllerConfig, LadderState, initial_state, next_state
from server.runtime.messages import SolveReport, UnitOutput
from server.runtime.timings import DOWN, PERFORMER, THINKER, UP, RecordSink, Transfer, UnitRecord
from server.runtime.unit_clock import UnitClock

T = TypeVar("T")
# typed text not yet in a text slot (the thinker takes k bytes a unit: 1024 bytes are 41 s of
# the cpu preset's 4 slots); a message that would go past it is refused, and the page is told
MAX_TYPED_BYTES = 1024


class OutputQueue(Generic[T]):
    """A bounded FIFO that never blocks its producer: when full, the oldest item is dropped.
    A thread takes items with `get`, an event loop's task with `await next()`."""

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"output queue size must be >= 1, got {maxsize}")
        self._items: deque[T] = deque()
        self.maxsize, self.dropped = maxsize, 0
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def put(self, item: T) -> None:
        with self._cond:
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_wake, fut)

    def get(self, timeout: float | None = None) -> T | None:
        """The oldest item, or None if none came within `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                return None
            return self._items.popleft()

    async def next(self) -> T:
        """The oldest item, waiting on the running loop until there is one."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._items:
                    return self._items.popleft()
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await waiter[1]
            finally:  # a cancelled task leaves no waiter behind for a later put to wake
                with self._cond:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Captions:
    """Text slots -> caption text: bytes are UTF-8 (a character may span units), specials
    (PAD, BOS, EOS) are not shown, and bytes that are not UTF-8 or not printable are dropped.
    Text after a unit without any starts a new utterance: a space sets it apart (the model's
    text stream has none between turns: "...a card.That card is blue.")."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._shown = self._paused = False

    def __call__(self, tokens: np.ndarray) -> str:
        data = bytes(int(t) for t in tokens if t < PAD)
        if not data:
            self._paused = self._shown
            return ""
        text = "".join(c for c in self._utf8.decode(data) if c.isprintable() and c != "\ufffd")
        if text and self._paused and not text[0].isspace():
            text = " " + text
        if text:
            self._shown, self._paused = True, False
        return text


@dataclass
class _Partial:
    """Half a UnitRecord: the thinker's output and the performer's report arrive separately."""
    t_input: float
    clock_unit: int  # the unit on the clock this model unit answers
    rung: int
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
    skipped: int = 0  # input units skipped because the pair was behind


# (unit, its clock unit, frames, audio, text, rung) -> taken: False when the pair's tick it is
# due in has formed already (it came too late: the session skips it). Never blocks.
SendInput = Callable[[int, int, np.ndarray, np.ndarray, bytes, int], bool]


class Session:
    """Created by Supervisor.open_session; thread-safe: the caller's thread or event loop on
    one side, the supervisor's monitor on the other."""

    def __init__(self, sid: int, name: str, clock: UnitClock, layout: UnitLayout, send_input: SendInput,
                 request_end: Callable[["Session"], None], sink: RecordSink | None,
                 output_queue: int, max_lag_units: int, ladder: tuple[Rung, ...] = (Rung(1),),
                 controller: ControllerConfig = ControllerConfig(),
                 on_skip: Callable[[int], None] | None = None,
                 on_end: Callable[["SessionEnd"], None] | None = None):
        """`sid`: the pair's number for it (on the wire); `name`: the daemon's, for people;
        `on_skip(clock_unit)`: each skipped input unit; `on_end(end)`: once, when the session
        has ended and its slot is free (on whichever thread ended it)."""
        self.id, self.name, self.clock, self._layout = sid, name, clock, layout
        self.outputs: OutputQueue[UnitOutput] = OutputQueue(output_queue)
        self._on_end = on_end
        self.max_lag_units = max_lag_units
        self.ladder, self.controller = ladder, controller
        self.ladder_state: LadderState = initial_state(controller)
        self.fixed_rung: int | None = None  # set: every unit runs at this rung (the start-up measure)
        self._send_input, self._request_end, self._sink = send_input, request_end, sink
        self._on_skip = on_skip
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self.end: SessionEnd | None = None
        self._closing = False
        self.units_in = self.units_out = self.skipped = 0
        self._next_clock_unit = 0
        self.misses = {THINKER: 0, PERFORMER: 0}
        self._partial: dict[int, _Partial] = {}  # units in flight only: bounded by max_lag_units
        self._typed = b""  # typed text that goes with the next unit
        self._backlog = 0  # typed bytes handed over that the thinker has not put in a slot yet
        self._captions = Captions()

    @property
    def rung(self) -> int:
        """The rung the next unit runs at."""
        return self.fixed_rung if self.fixed_rung is not None else self.ladder_state.rung

    @property
    def kv_cache_tokens(self) -> int:
        """KV rows per layer this session holds: its sinks and the units in its window."""
        if self.end is not None:
            return 0
        lay = self._layout
        return lay.sinks + min(self.units_out, lay.window_units) * lay.unit

    # -- the caller's side ------------------------------------------------------------------
    def submit(self, frames: np.ndarray, audio: np.ndarray, clock_unit: int | None = None) -> int | None:
        """Hand over input unit `clock_unit` of the clock (default: the one after the last;
        frames (1, 4, H, W, 3) uint8 RGB, audio (1, samples) float32 in [-1, 1]), with the
        text typed since the last unit. Returns its model unit, or None when it was skipped
        because `max_lag_units` units are still in flight or its tick has gone (the typed text
        then goes with the next unit). Raises SessionEnded once it is over or closing."""
        with self._lock:
            if self.end is not None or self._closing:
                raise SessionEnded(self.end.reason if self.end is not None else "the session is closing")
            c = self._next_clock_unit if clock_unit is None else clock_unit
            if c < self._next_clock_unit:
                raise ValueError(f"clock unit {c} handed over after clock unit {self._next_clock_unit - 1}: "
                                 f"units go in the clock's order, once each")
            self._next_clock_unit = c + 1
            n, lag, rung = self.units_in, self.units_in - self.units_out, self.rung
            skip = lag >= self.max_lag_units
            typed = b""
            if skip:
                self.skipped += 1
            else:
                typed, self._typed = self._typed, b""
                self.units_in += 1
                self._partial[n] = _Partial(time.monotonic(), c, rung)
        if not skip and not self._send_input(n, c, frames, audio, typed, rung):
            with self._lock:  # too late for its tick: skipped after all, n is the next unit's
                skip = True
                self.skipped += 1
                self.units_in -= 1
                del self._partial[n]
                self._typed = typed + self._typed
        if skip:
            if self._on_skip is not None:
                self._on_skip(c)
            return None
        with self._lock:  # the thinker's queue of typed bytes: what came, less one unit's slots
            self._backlog = max(0, self._backlog + len(typed) - self._layout.text)
        return n

    def submit_text(self, text: str) -> bool:
        """Typed text: its bytes go with the next unit, and the thinker feeds them into the text
        slots that follow. Refused (False) while MAX_TYPED_BYTES would be waiting, counted with
        what the thinker still holds (it takes k bytes a unit), or once the session is closing."""
        data = text.encode()
        with self._lock:
            waiting = self._backlog + len(self._typed)
            if self.end is not None or self._closing or waiting + len(data) > MAX_TYPED_BYTES:
                return False
            self._typed += data
        return True

    def close(self) -> None:
        """No more input (never blocks): the pair finishes the units handed over, then the
        session ends; `wait` for it."""
        with self._lock:
            if self._closing or self.end is not None:
                return
            self._closing = True
        self._request_end(self)

    def wait(self, timeout: float | None = None) -> SessionEnd:
        if not self._ended.wait(timeout):
            raise TimeoutError(f"session {self.name} has not ended within {timeout} s "
                               f"({self.units_out}/{self.units_in} units out)")
        assert self.end is not None
        return self.end

    # -- the monitor's side -----------------------------------------------------------------
    def on_output(self, out: UnitOutput) -> None:
        now = time.monotonic()
        with self._lock:
            if self.end is not None and not self.end.ok:
                return  # a session ended by a fault delivers nothing more
            self.units_out += 1
            p = self._partial[out.unit]
            p.out, p.s2s = out, now - p.t_input
            out.clock_unit, out.steps, out.top_steps = p.clock_unit, self.ladder[p.rung].steps, self.ladder[0].steps
            out.caption, out.signal_to_signal_s, out.ready_at = self._captions(out.text), p.s2s, now
            out.skipped = self.skipped
            if self.clock.started:
                self.ladder_state = next_state(self.ladder_state, now - self.clock.due(p.clock_unit),
                                               p.rung, len(self.ladder) - 1, self.controller)
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
        late = {THINKER: self.clock.is_late(p.clock_unit, o.shipped_ns * 1e-9),
                PERFORMER: self.clock.is_late(p.clock_unit, r.sent_ns * 1e-9)}
        for role, is_late in late.items():
            self.misses[role] += is_late
        if self._sink is not None:
            self._sink(UnitRecord(
                self.id, unit, {THINKER: dict(o.stages), PERFORMER: dict(r.stages)},
                {DOWN: Transfer(r.rows_bytes, r.rows_seconds), UP: Transfer(o.latents_bytes, o.latents_seconds)},
                p.s2s, late, p.t_input, clock_unit=p.clock_unit, rung=p.rung,
                steps=self.ladder[p.rung].steps))

    def finish(self, ok: bool, reason: str) -> None:
        """Called by the supervisor: the session is over and its slot is free."""
        with self._lock:
            if self.end is not None:
                return
            self.end = SessionEnd(ok, reason, time.monotonic(), self.units_in, self.units_out,
                                  self.outputs.dropped, dict(self.misses), self.skipped)
        self._ended.set()
        if self._on_end is not None:
            self._on_end(self.end)
