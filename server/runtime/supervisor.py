"""The supervisor: starts the thinker-performer pair, hands it sessions one at a time, watches it.

Runbook of the monitor thread (every `poll_s`):
  1. read what the workers sent: SessionOpened, UnitOutput, SolveReport, SessionClosed,
     WorkerFailed; route each to the session it belongs to
  2. judge liveness (pair.py): a dead worker (its sentinel) or a hung one (heartbeat older
     than `hang_s`) is a fault; with the defaults it is noticed within 0.55 s
  3. on a fault: end the session with the reason, SIGKILL both workers, start a new pair;
     open_session waits for it
On close(): the session ends, both workers are asked to stop, then terminated, then killed,
and every one is reaped. A worker whose parent dies exits by itself (worker.py).
Model compute never runs here; this process only moves messages and keeps counts.
"""
from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from model.attention import Backend
from model.config import UNIT_SECONDS
from model.streaming import Character
from server.runtime.messages import (CharacterSpec, EndSession, InputUnit, Role, SessionClosed,
                                     SessionOpened, SolveReport, StartSession, UnitOutput,
                                     WorkerFailed)
from server.runtime.pair import ROLES, Fault, WorkerPair
from server.runtime.session import Session
from server.runtime.timings import RecordSink
from server.runtime.transport import pick_transport
from server.runtime.unit_clock import UnitClock
from server.runtime.worker import WorkerSpec

log = logging.getLogger("duplex.runtime")


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    preset: str = "cpu"  # model preset (model.config.PRESETS)
    checkpoint: str | None = None  # checkpoint folder; None = seeded dummy weights
    weights_seed: int = 0  # seed of the dummy weights
    transport: str = "auto"  # auto | gloo | ipc | nccl
    threads: int = Field(1, ge=1)  # torch threads per worker on CPU (one core a role)
    backend: Backend = "sdpa"  # attention, norm and RoPE kernels
    cuda_graphs: bool = False  # replay each step as a CUDA graph once the cache is in steady state
    heartbeat_s: float = Field(0.1, gt=0)  # each worker writes its heartbeat this often
    hang_s: float = Field(0.5, gt=0)  # no heartbeat for this long: the worker is hung
    poll_s: float = Field(0.02, gt=0)  # the monitor's period
    ready_timeout_s: float = Field(120.0, gt=0)  # spawn -> READY (model load, rendezvous)
    open_timeout_s: float = Field(30.0, gt=0)  # StartSession -> prefill done
    max_lag_units: int = Field(8, ge=1)  # units in flight before a session is ended as too slow
    output_queue: int = Field(16, ge=1)  # decoded units kept for a slow consumer


class _Opening:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.t0 = 0.0
        self.error = ""


class Supervisor:
    def __init__(self, cfg: RuntimeConfig, sink: RecordSink | None = None,
                 on_fault: Callable[[Fault], None] | None = None):
        self.cfg, self.sink, self.on_fault = cfg, sink, on_fault
        self.transport = pick_transport(cfg.transport)
        self.faults: list[Fault] = []
        self.restarts = 0
        self.all_pids: list[int] = []  # every worker ever started (tests check none is left)
        self._pair: WorkerPair | None = None
        self._session: Session | None = None
        self._opening: _Opening | None = None
        self._next_sid = 1
        self._send_lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._ready = threading.Event()  # a pair is up
        self._free = threading.Event()  # ... and serves no session
        self._closing = threading.Event()
        self._broken = ""
        self._monitor: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Supervisor":
        self._spawn()
        self._monitor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._monitor.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._monitor is not None:
            self._monitor.join()
        if self._session is not None:
            self._session.finish(False, "the daemon is shutting down")
        if self._pair is not None:
            self._pair.stop()
        self._ready.clear()

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pids(self) -> dict[Role, int]:
        assert self._pair is not None
        return {r: p.pid for r, p in self._pair.procs.items()}

    def _spawn(self) -> None:
        c = self.cfg
        spec = WorkerSpec(Role.THINKER, c.preset, c.checkpoint, c.weights_seed, self.transport,
                          store_port=0, threads=c.threads, heartbeat_s=c.heartbeat_s,
                          max_pending=c.max_lag_units, backend=c.backend, cuda_graphs=c.cuda_graphs)
        pair = WorkerPair(spec, c.hang_s)
        try:
            pair.start(c.ready_timeout_s)
        finally:
            self.all_pids += pair.pids
        log.info("worker pair ready: %s", {r.value: (m.pid, m.device) for r, m in pair.ready.items()})
        self._pair = pair
        self._ready.set()
        self._free.set()

    # -- sessions ---------------------------------------------------------------------------
    def open_session(self, character: Character, seed: int, timeout: float | None = None) -> Session:
        """Prefill `character` on a free pair and start the session's unit clock."""
        timeout = self.cfg.ready_timeout_s if timeout is None else timeout
        with self._open_lock:  # one session at a time on the pair
            if not (self._ready.wait(timeout) and self._free.wait(timeout)):
                raise TimeoutError(f"no free worker pair within {timeout:.0f} s: "
                                   f"{self._broken or 'the pair is serving another session'}")
            if self._broken:
                raise RuntimeError(f"the worker pair cannot be restarted: {self._broken}")
            sid, self._next_sid = self._next_sid, self._next_sid + 1
            self._free.clear()
            self._opening = opening = _Opening()
        self._send(Role.THINKER, StartSession(sid, CharacterSpec.of(character), seed))
        if not opening.done.wait(self.cfg.open_timeout_s):
            raise TimeoutError(f"session {sid}: prefill not done within {self.cfg.open_timeout_s} s")
        if opening.error:
            raise RuntimeError(f"session {sid} could not start: {opening.error}")
        session = Session(sid, UnitClock(opening.t0, UNIT_SECONDS),
                          send_input=lambda n, f, a, t: self._send(Role.THINKER, InputUnit(sid, n, f, a, t)),
                          request_end=lambda s: self._send(Role.THINKER, EndSession(s.id)),
                          sink=self.sink, output_queue=self.cfg.output_queue,
                          max_lag_units=self.cfg.max_lag_units)
        self._session = session
        return session

    def _send(self, role: Role, msg: Any) -> None:
        pair = self._pair
        try:
            with self._send_lock:
                assert pair is not None
                pair.send(role, msg)
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            log.warning("could not send %s to the %s: %s (the monitor handles the fault)",
                        type(msg).__name__, role.value, e)

    # -- the monitor ------------------------------------------------------------------------
    def _watch(self) -> None:
        errors: dict[Role, str] = {}
        while not self._closing.is_set():
            pair = self._pair
            assert pair is not None
            conns = {pair.conns[r]: r for r in ROLES}
            # 1. messages
            for obj in wait(list(conns) + [p.sentinel for p in pair.procs.values()], self.cfg.poll_s):
                if obj in conns:
                    try:
                        msg = obj.recv()
                    except (EOFError, OSError):
                        continue  # the worker is gone; step 2 names it
                    if isinstance(msg, WorkerFailed):
                        log.error("%s failed:\n%s", msg.role.value, msg.error)
                        errors[msg.role] = msg.error.strip().splitlines()[-1]
                    else:
                        self._route(msg)
            # 2. liveness
            fault = pair.fault()
            if fault is not None:
                if fault.role in errors:
                    fault.what += f" after: {errors.pop(fault.role)}"
                self._recover(pair, fault)

    def _route(self, msg: Any) -> None:
        s = self._session
        if isinstance(msg, SessionOpened) and self._opening is not None:
            self._opening.t0 = time.monotonic()
            self._opening.done.set()
        elif s is None or getattr(msg, "session", None) != s.id:
            log.debug("dropping %s of a session no longer served", type(msg).__name__)
        elif isinstance(msg, UnitOutput):
            s.on_output(msg)
        elif isinstance(msg, SolveReport):
            s.on_report(msg)
        elif isinstance(msg, SessionClosed):
            s.finish(True, "closed after its last unit")
            self._session = None
            self._free.set()

    def _recover(self, pair: WorkerPair, fault: Fault) -> None:
        # 3. end the session with the reason, kill the pair, start a new one
        log.error("worker fault: %s; restarting the pair", fault)
        self._ready.clear()
        self._free.clear()
        pair.kill()
        self.faults.append(fault)
        reason = f"worker fault: {fault}"
        if self._session is not None:
            self._session.finish(False, reason)
            self._session = None
        if self._opening is not None and not self._opening.done.is_set():
            self._opening.error = reason
            self._opening.done.set()
        if self.on_fault is not None:
            self.on_fault(fault)
        if self._closing.is_set():
            return
        try:
            self._spawn()
            self.restarts += 1
        except Exception as e:  # noqa: BLE001 - recorded and raised to the next open_session
            self._broken = str(e)
            self._ready.set()
            self._free.set()
            self._closing.set()
