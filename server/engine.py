"""The boundary between the front end and model compute: `Engine` and `EngineSession`, and
`RuntimeEngine`, their implementation over the thinker-performer runtime (server/runtime/).

The front end lives on an asyncio loop and never waits on the model. What crosses here is
media at the model's rates, as numpy arrays the front end can hand to PyAV: frames
(4, H, W, 3) uint8 RGB at 25 fps and audio (3840,) float32 at 24 kHz, in 160 ms units.

RuntimeEngine runs `pairs` supervised worker pairs, each serving up to `cfg.slots` calls at
once (one batched step a tick); before it is ready, each pair measures its real-time margin
(`margins`). A call goes to the pair with the fewest calls.
A session's unit clock starts with the call's first media (the front end starts it); the
runtime picks each unit's rung of the quality ladder and skips input units while the pair is
behind, so an output's `unit` (on the clock) may jump. Its threads and the loop meet in two
places only:
  in   submit() returns at once; a per-session thread hands the unit over (a pipe write can
       block while the thinker is busy)
  out  the supervisor's thread hands each decoded unit to the session (the runtime session's
       `deliver`), which converts it and passes it to the loop with call_soon_threadsafe, into
       the call's one bounded queue (a stalled consumer loses the oldest unit)
This module knows nothing of WebRTC, HTTP or Prometheus.
"""
from __future__ import annotations

import asyncio
import codecs
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from model.config import PAD, ModelConfig
from model.streaming import Character
from server.runtime.pair import Fault
from server.runtime.messages import UnitOutput as RuntimeUnitOutput
from server.runtime.session import Session, SessionEnd, SessionEnded
from server.runtime.supervisor import Margin, RuntimeConfig, Supervisor
from server.runtime.timings import RecordSink
from server.runtime.unit_clock import UnitClock

log = logging.getLogger("duplex.engine")
OUTPUT_QUEUE = 8  # decoded units waiting for the loop; the oldest goes first when full
# typed text not yet in a text slot (the thinker takes k bytes a unit: 1024 bytes are 41 s of
# the cpu preset's 4 slots); a message that would go past it is refused, and the page is told
MAX_TYPED_BYTES = 1024


class AtCapacity(Exception):
    """No call can start now; retry after `retry_after_s` seconds."""

    def __init__(self, reason: str, retry_after_s: int = 2):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass
class UnitOutput:
    """One unit of the avatar, ready for the output tracks."""
    unit: int  # on the session's unit clock: it plays in that unit's place
    frames: np.ndarray  # (4, H, W, 3) uint8 RGB
    audio: np.ndarray  # (3840,) float32 in [-1, 1] at 24 kHz
    text: str  # what the avatar says in this unit ("" when silent)
    signal_to_signal_s: float  # unit handed to the model -> its output ready (model side)
    ready_at: float  # time.monotonic() when the output reached the daemon
    timings: dict[str, float] = field(default_factory=dict)  # seconds: handover, <role>.<stage>
    steps: int = 0  # solver steps of the quality ladder's rung it ran at
    top_steps: int = 0  # the top rung's steps: fewer is reduced quality
    skipped: int = 0  # input units of this session skipped so far (the pair was behind)


class EngineSession(Protocol):
    id: str
    clock: UnitClock  # unstarted until the front end starts it with the call's first media
    outputs: asyncio.Queue[UnitOutput]
    ended: asyncio.Event  # set once the session is over and its resources are free
    end_reason: str

    def submit(self, unit: int, frames: np.ndarray, audio: np.ndarray) -> None:
        """Input unit `unit` of the clock (frames (4, H, W, 3) uint8, audio (3840,) float32);
        never blocks; the runtime may skip it while the pair is behind."""

    def submit_text(self, text: str) -> bool:
        """Typed text from the page; returns whether it enters the model's stream."""

    def close(self, reason: str) -> None:
        """End the session (never blocks); `ended` is set once it is over."""


class Engine(Protocol):
    ready: bool  # workers loaded and measured: the engine has started
    healthy: bool  # False when no worker pair can be started any more: restart the daemon
    available: int  # call slots that would take a call now (up, not restarting, free)
    capacity: int  # calls at once
    margins: list[Margin]  # each rung's real-time margin measured at start (the first pair's)
    active: int  # calls holding a slot (a closing call holds it until its resources are free)
    kv_cache_tokens: int  # KV rows in use per layer, summed over the calls

    async def start(self) -> None:
        """Load the model and start the workers; returns once they are ready."""

    async def start_session(self, character: Character) -> EngineSession:
        """Prefill `character` and start its unit clock; raises AtCapacity when full."""

    async def stop(self) -> None:
        """End every session and stop the workers; nothing is left running."""


class TextDecoder:
    """Text slots -> caption text: bytes are UTF-8 (a character may span units), specials
    (PAD, BOS, EOS) are not shown, and bytes that are not UTF-8 or not printable are dropped."""

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, tokens: np.ndarray) -> str:
        text = self._utf8.decode(bytes(int(t) for t in tokens if t < PAD))
        return "".join(c for c in text if c.isprintable() and c != "\ufffd")


class RuntimeSession:
    """One call in a slot of a supervised pair; created by RuntimeEngine.start_session, which
    attaches the runtime's session once the pair has prefilled its character."""

    def __init__(self, sid: str, loop: asyncio.AbstractEventLoop, kv_rows: tuple[int, int, int],
                 on_free: Callable[[], None]):
        self.id = sid
        self.outputs: asyncio.Queue[UnitOutput] = asyncio.Queue(OUTPUT_QUEUE)
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.kv_cache_tokens = 0
        self._loop, self._on_free = loop, on_free
        self._sinks, self._unit_rows, self._window = kv_rows
        self._text = TextDecoder()
        self._handed: dict[int, tuple[float, float]] = {}  # unit -> (submit called, handed over)
        self._typed = b""  # typed text that goes with the next unit
        self._backlog = 0  # typed bytes handed over that the thinker has not put in a slot yet
        self._lock = threading.Lock()  # guards the two flags and the hand-over thread's queue
        self._closing = False  # close() was called: no more units
        self.over = False  # the runtime session has ended: the hand-over thread is shut
        self._done = threading.Event()  # ... and its slot is free
        self._in = ThreadPoolExecutor(1, thread_name_prefix=f"duplex-in-{sid}")

    def attach(self, session: Session) -> None:
        self._session, self.clock = session, session.clock
        self._top_steps, self._slots = session.ladder[0].steps, session.text_slots

    # -- the loop's side --------------------------------------------------------------------
    def submit(self, unit: int, frames: np.ndarray, audio: np.ndarray) -> None:
        with self._lock:
            if not (self._closing or self.over):
                typed, self._typed = self._typed, b""
                self._in.submit(self._hand_over, unit, frames, audio, typed, time.monotonic())

    def submit_text(self, text: str) -> bool:
        """The bytes go with the next unit; the thinker feeds them into the next text slots.
        Refused (False) while MAX_TYPED_BYTES would be waiting, counted with what the thinker
        still holds: it takes only k bytes a unit."""
        data = text.encode()
        with self._lock:
            waiting = self._backlog + len(self._typed)
            if self._closing or self.over or waiting + len(data) > MAX_TYPED_BYTES:
                return False
            self._typed += data
        return True

    def close(self, reason: str) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self.end_reason = self.end_reason or reason
            if not self.over:
                self._in.submit(self._end_runtime_session)  # after the units already queued

    # -- the hand-over thread ---------------------------------------------------------------
    def _hand_over(self, unit: int, frames: np.ndarray, audio: np.ndarray, typed: bytes,
                   called: float) -> None:
        # frames stay uint8 (the thinker converts them on its device); audio -> (1, 3840)
        f = frames[None]
        self._handed[unit] = (called, time.monotonic())  # before: the output may beat us back
        try:
            n = self._session.submit(f, audio[None].astype(np.float32, copy=False), typed, clock_unit=unit)
        except SessionEnded:
            return  # on_end reports its reason
        with self._lock:
            if n is None:  # skipped: the pair is behind; the typed text goes with the next unit
                del self._handed[unit]
                self._typed = typed + self._typed
            else:  # the thinker's queue of typed bytes: what came, less one unit's slots
                self._backlog = max(0, self._backlog + len(typed) - self._slots)

    def _end_runtime_session(self) -> None:
        """The pair finishes the units handed over, then frees the session (on_end)."""
        try:
            self._session.close(timeout=10.0)
        except TimeoutError as e:  # a hung pair: the supervisor's hang detection ends it
            log.warning("session %s: %s", self.id, e)

    # -- the supervisor's thread (the runtime session's deliver and on_end) -------------------
    def on_output(self, out: RuntimeUnitOutput) -> None:
        ready = time.monotonic()
        called, started = self._handed.pop(out.clock_unit, (ready, ready))
        self.kv_cache_tokens = self._sinks + min(out.unit + 1, self._window) * self._unit_rows
        timings = {"handover": started - called, **{f"thinker.{k}": v for k, v in out.stages.items()}}
        uo = UnitOutput(out.clock_unit, out.frames, out.audio.astype(np.float32, copy=False),
                        self._text(out.text), ready - started, ready, timings, out.steps,
                        self._top_steps, self._session.skipped)
        self._loop.call_soon_threadsafe(self._deliver, uo)

    def on_end(self, end: SessionEnd) -> None:
        self.kv_cache_tokens = 0
        with self._lock:
            self.over = True
        self._in.shutdown(wait=False, cancel_futures=True)  # a queued unit would find it ended
        self._on_free()
        self._loop.call_soon_threadsafe(self._finish, self.end_reason or end.reason)
        self._done.set()

    def join(self, timeout: float) -> None:
        """Wait until the runtime session has ended and its slot is free."""
        self._done.wait(timeout)

    # -- the loop's side, from the supervisor's thread --------------------------------------
    def _deliver(self, out: UnitOutput) -> None:
        if self.outputs.full():
            self.outputs.get_nowait()  # a stalled consumer loses the oldest unit, never blocks us
        self.outputs.put_nowait(out)

    def _finish(self, reason: str) -> None:
        self.end_reason = reason
        self.ended.set()


class RuntimeEngine:
    """`pairs` supervised thinker-performer pairs of `cfg.slots` call slots each."""

    def __init__(self, cfg: RuntimeConfig, model: ModelConfig, pairs: int = 1,
                 sink: RecordSink | None = None, on_fault: Callable[[Fault], None] | None = None,
                 on_skip: Callable[[int], None] | None = None):
        self.cfg, self.pairs, self.capacity = cfg, pairs, pairs * cfg.slots
        self._sink, self._on_fault, self._on_skip = sink, on_fault, on_skip
        self.margins: list[Margin] = []
        self._sups: list[Supervisor] = []
        # each call -> its pair (a None call: opening); a closing call is here until freed
        self._busy: dict[str, tuple[int, RuntimeSession | None]] = {}
        self._lock = threading.Lock()
        self._seq = 0
        lay = model.layout  # the preset's, or the checkpoint's
        self._kv = (lay.sinks, lay.unit, lay.window_units)

    @property
    def ready(self) -> bool:
        return len(self._sups) == self.pairs

    @property
    def healthy(self) -> bool:
        return not self._sups or any(s.healthy for s in self._sups)

    def _calls_on(self, pair: int) -> int:
        return sum(p == pair for p, _ in self._busy.values())

    @property
    def available(self) -> int:
        """Free call slots on pairs that are up (not restarting after a fault): one restarting
        pair never blocks the others."""
        with self._lock:
            return sum(self.cfg.slots - self._calls_on(i) for i, s in enumerate(self._sups) if s.up)

    @property
    def active(self) -> int:
        return len(self._busy)

    @property
    def kv_cache_tokens(self) -> int:
        return sum(s.kv_cache_tokens for _, s in list(self._busy.values()) if s is not None)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(self.pairs):
            # it logs faults and restarts the pair; the session gets the reason
            sup = Supervisor(self.cfg, sink=self._sink, on_fault=self._on_fault)
            await loop.run_in_executor(None, sup.start)
            try:  # warm-up units, measured: the pair counts as ready only after them
                margins = await loop.run_in_executor(None, sup.measure)
            except BaseException:
                await loop.run_in_executor(None, sup.close)
                raise
            self.margins = self.margins or margins
            self._sups.append(sup)

    async def start_session(self, character: Character) -> RuntimeSession:
        if not self.ready:
            raise AtCapacity("the model workers are starting; try again shortly", retry_after_s=5)
        with self._lock:
            seats = {i: self.cfg.slots - self._calls_on(i) for i in range(len(self._sups))}
            free = [i for i in seats if seats[i] > 0 and self._sups[i].up]
            if not free:
                full = all(n == 0 for n in seats.values())
                raise AtCapacity(f"all {self.capacity} call slot(s) are in use" if full else
                                 "the model workers are restarting after a fault; try again shortly",
                                 retry_after_s=2 if full else 5)
            pair = max(free, key=lambda i: seats[i])  # the least busy pair
            self._seq += 1
            sid, seed = f"{pair}.{self._seq}", self._seq
            self._busy[sid] = (pair, None)  # reserved while the character is prefilled
        loop = asyncio.get_running_loop()
        rs = RuntimeSession(sid, loop, self._kv, on_free=lambda: self._free(sid))
        try:
            session = await loop.run_in_executor(
                None, lambda: self._sups[pair].open_session(character, seed=seed, timeout=5.0, start_clock=False,
                                                            on_skip=self._on_skip, deliver=rs.on_output,
                                                            on_end=rs.on_end))
        except (TimeoutError, RuntimeError) as e:  # the pair is restarting after a fault
            self._free(sid)
            raise AtCapacity(f"the call could not start: {e}", retry_after_s=5) from e
        except BaseException:
            self._free(sid)
            raise
        rs.attach(session)
        with self._lock:  # one that ended at once has freed its slot already (on_end)
            if not rs.over:
                self._busy[sid] = (pair, rs)
        return rs

    def _free(self, sid: str) -> None:
        with self._lock:
            self._busy.pop(sid, None)

    async def stop(self) -> None:
        # 1. end the calls, 2. stop the pairs (each session ends), 3. wait until each is freed
        sessions = [s for _, s in self._busy.values() if s is not None]
        for s in sessions:
            s.close("the daemon is shutting down")
        loop = asyncio.get_running_loop()
        for sup in self._sups:
            await loop.run_in_executor(None, sup.close)
        for s in sessions:
            await loop.run_in_executor(None, s.join, 5.0)
