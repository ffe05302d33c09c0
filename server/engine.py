"""The boundary between the front end and model compute: `Engine` and `EngineSession`, and
`RuntimeEngine`, their implementation over the thinker-performer runtime (server/runtime/).

The front end lives on an asyncio loop and never waits on the model. What crosses here is
media at the model's rates, as numpy arrays the front end can hand to PyAV: frames
(1, 4, H, W, 3) uint8 RGB at 25 fps and audio (1, 3840) float32 at 24 kHz, in 160 ms units.

RuntimeEngine runs `pairs` supervised worker pairs, each serving up to `cfg.slots` calls at
once (one batched step a tick); before it is ready, each pair measures its real-time margin
(`margins`). A call goes to the pair with the fewest calls. Its session is the runtime's
(server/runtime/session.py), one object from the front end to the worker: its unit clock
starts with the call's first media (the front end starts it); the runtime picks each unit's
rung of the quality ladder and skips input units while the pair is behind, so an output's
`clock_unit` may jump. The session's methods never block the loop: submit only queues (the
pair's sender thread writes to the worker), outputs come back through one bounded queue the
loop awaits (a stalled consumer loses the oldest unit).
This module knows nothing of WebRTC, HTTP or Prometheus.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Callable, Protocol

import numpy as np

from model.streaming import Character
from server.runtime.messages import UnitOutput
from server.runtime.pair import Fault
from server.runtime.session import OutputQueue, Session, SessionEnd
from server.runtime.supervisor import Margin, RuntimeConfig, Supervisor
from server.runtime.timings import RecordSink
from server.runtime.unit_clock import UnitClock


class AtCapacity(Exception):
    """No call can start now; retry after `retry_after_s` seconds."""

    def __init__(self, reason: str, retry_after_s: int = 2):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class EngineSession(Protocol):
    """What the front end uses of a session (server/runtime/session.py's Session)."""
    name: str
    clock: UnitClock  # unstarted until the front end starts it with the call's first media
    outputs: OutputQueue[UnitOutput]  # the loop awaits outputs.next()
    end: SessionEnd | None  # set once the session is over and its resources are free

    def submit(self, frames: np.ndarray, audio: np.ndarray, clock_unit: int | None = None) -> int | None:
        """Input unit `clock_unit` (frames (1, 4, H, W, 3) uint8, audio (1, 3840) float32);
        never blocks; None: the runtime skipped it (the pair is behind); raises SessionEnded
        once the session is over."""

    def submit_text(self, text: str) -> bool:
        """Typed text from the page; returns whether it enters the model's stream."""

    def close(self) -> None:
        """End the session (never blocks); `end` is set once it is over."""


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


class RuntimeEngine:
    """`pairs` supervised thinker-performer pairs of `cfg.slots` call slots each."""

    def __init__(self, cfg: RuntimeConfig, pairs: int = 1,
                 sink: RecordSink | None = None, on_fault: Callable[[Fault], None] | None = None,
                 on_skip: Callable[[int], None] | None = None):
        self.cfg, self.pairs, self.capacity = cfg, pairs, pairs * cfg.slots
        self._sink, self._on_fault, self._on_skip = sink, on_fault, on_skip
        self.margins: list[Margin] = []
        self._sups: list[Supervisor] = []
        # each call -> its pair and session (None: opening); a closing call is here until freed
        self._busy: dict[str, tuple[int, Session | None]] = {}
        self._lock = threading.Lock()
        self._seq = 0

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

    async def start_session(self, character: Character) -> Session:
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
            name, seed = f"{pair}.{self._seq}", self._seq
            self._busy[name] = (pair, None)  # reserved while the character is prefilled
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(
                None, lambda: self._sups[pair].open_session(
                    character, seed=seed, timeout=5.0, start_clock=False, name=name,
                    on_skip=self._on_skip, on_end=lambda _: self._free(name)))
        except (TimeoutError, RuntimeError) as e:  # the pair is restarting after a fault
            self._free(name)
            raise AtCapacity(f"the call could not start: {e}", retry_after_s=5) from e
        except BaseException:
            self._free(name)
            raise
        with self._lock:  # one that ended at once has freed its slot already (on_end)
            if session.end is None:
                self._busy[name] = (pair, session)
        return session

    def _free(self, name: str) -> None:
        with self._lock:
            self._busy.pop(name, None)

    async def stop(self) -> None:
        # 1. end the calls, 2. stop the pairs (each session ends), 3. wait until each is freed
        sessions = [s for _, s in self._busy.values() if s is not None]
        for s in sessions:
            s.close()
        loop = asyncio.get_running_loop()
        for sup in self._sups:
            await loop.run_in_executor(None, sup.close)
        for s in sessions:
            try:
                await loop.run_in_executor(None, s.wait, 5.0)
            except TimeoutError:
                pass  # the pair is stopped: nothing of the session is left running
