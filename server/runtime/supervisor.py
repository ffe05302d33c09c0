"""The supervisor: starts the thinker-performer pair, hands it sessions one at a time, watches it.

Runbook of the monitor thread (every `poll_s`):
  1. read what the workers sent: SessionOpened, UnitOutput, SolveReport, SessionClosed,
     WorkerFailed; route each to the session it belongs to
  2. judge liveness (pair.py): a dead worker (its sentinel), a hung one (heartbeat older than
     `hang_s`), a stuck step (longer than `step_s`) or a prefill past `open_timeout_s` is a
     fault; with the defaults each is noticed within a second
  3. on a fault: end the session with the reason, SIGKILL both workers, start a new pair;
     a pair that fails to start is tried again after a back-off (1, 2, 4 ... 30 s), and after
     `restart_attempts` failures in a row the supervisor is not `healthy` (the daemon's
     /healthz says 503, so an orchestrator restarts it); open_session waits for a pair
A fault noticed once close() has begun restarts nothing.
Before it serves, `measure()` runs warm-up units through the pair at the top and the lowest
rung of the quality ladder (first allocations, thread pools) and returns the real-time margin
at each: the daemon logs and exports it, and never refuses to start for it.
On close(): the session ends, both workers are asked to stop, then terminated, then killed,
and every one is reaped. A worker whose parent dies exits by itself (worker.py).
Model compute never runs here; this process only moves messages and keeps counts.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from multiprocessing.connection import wait
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from model.attention import Backend
from model.config import UNIT_SECONDS, ModelConfig
from model.config import preset as preset_config
from model.flow import Rung, quality_ladder
from model.streaming import Character
from server.runtime.messages import (CharacterSpec, EndSession, InputUnit, Role, SessionClosed,
                                     SessionOpened, SolveReport, StartSession, UnitOutput,
                                     WorkerFailed)
from server.runtime.ladder import ControllerConfig
from server.runtime.pair import ROLES, Fault, WorkerPair
from server.runtime.session import Session
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.timings import RecordSink, RunStats
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
    compile: bool = False  # torch.compile the steady-state steps (compiled before READY)
    heartbeat_s: float = Field(0.1, gt=0)  # each worker writes its heartbeat this often
    # no heartbeat for this long: the worker is hung. The largest gap measured on the 2-core
    # machine under full load is in the README (reliability); this leaves room above it and
    # still detects a stopped worker within a second
    hang_s: float = Field(0.8, gt=0)
    # one step (a unit in, rows, latents) running this long: the worker is stuck (a hung gloo
    # receive, a CUDA kernel that never returns); raised after the measured start to 4x the
    # measured per-unit cost where that is longer (a preset far from real time still works)
    step_s: float = Field(0.9, gt=0)
    restart_attempts: int = Field(3, ge=1)  # failed pair starts in a row before not `healthy`
    poll_s: float = Field(0.02, gt=0)  # the monitor's period
    ready_timeout_s: float = Field(120.0, gt=0)  # spawn -> READY (model load, rendezvous)
    open_timeout_s: float = Field(30.0, gt=0)  # StartSession -> prefill done
    max_lag_units: int = Field(2, ge=1)  # units in flight; an input unit past that is skipped
    output_queue: int = Field(16, ge=1)  # decoded units kept for a slow consumer
    controller: ControllerConfig = ControllerConfig()  # picks each unit's rung of the quality ladder
    warmup_units: int = Field(10, ge=1)  # measured per rung at start-up, after the window's units
    # test only: the performer sleeps this long per solver evaluation, as a slower machine would
    # take (the runtime tests of the ladder and of skipping); 0 in service
    test_eval_delay_s: float = Field(0.0, ge=0)


class Margin(BaseModel):
    """The pair's real-time margin at one rung: the unit (160 ms) / its per-unit cost (p50 of
    the warm-up units): the busier worker, or the loop-carried chain commit(n-1) -> observe(n)
    -> speak(n) -> solve(n), whichever is longer. Above 1 the pair holds real time."""
    rung: int
    steps: int
    solver: str
    margin: float
    cost_ms: float


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
        self.failures = 0  # pair starts that failed in a row
        self.last_error = ""
        self._retry_at = 0.0
        self._stuck_open: Fault | None = None  # a prefill past its timeout, for the monitor
        self._step_s = cfg.step_s
        self._monitor: threading.Thread | None = None
        self.model_cfg = preset_config(cfg.preset) if cfg.checkpoint is None else None
        self.ladder: tuple[Rung, ...] = ()  # known once the pair is READY (a checkpoint's config)

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
            log.info("the workers' longest heartbeat gap: %.0f ms (hang limit %.0f ms)",
                     self._pair.max_heartbeat_age * 1e3, self.cfg.hang_s * 1e3)
            self._pair.stop()
        self._ready.clear()

    def __enter__(self) -> "Supervisor":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def up(self) -> bool:
        """A pair is running and not restarting."""
        return self._ready.is_set()

    @property
    def free(self) -> bool:
        """Up and serving no session: open_session would start at once."""
        return self._ready.is_set() and self._free.is_set()

    @property
    def max_heartbeat_age(self) -> float:
        """The longest the current pair's workers went without a heartbeat (s): hang_s's basis."""
        return 0.0 if self._pair is None else self._pair.max_heartbeat_age

    @property
    def healthy(self) -> bool:
        """False once `restart_attempts` starts of the pair have failed in a row."""
        return self.failures < self.cfg.restart_attempts

    @property
    def pids(self) -> dict[Role, int]:
        assert self._pair is not None
        return {r: p.pid for r, p in self._pair.procs.items()}

    def _spawn(self) -> None:
        c = self.cfg
        spec = WorkerSpec(Role.THINKER, c.preset, c.checkpoint, c.weights_seed, self.transport,
                          store="", threads=c.threads, heartbeat_s=c.heartbeat_s,
                          max_pending=c.max_lag_units, backend=c.backend, cuda_graphs=c.cuda_graphs,
                          compile=c.compile,
                          test_eval_delay_s=c.test_eval_delay_s)
        pair = WorkerPair(spec, c.hang_s, self._step_s)
        try:
            pair.start(c.ready_timeout_s)
        finally:
            self.all_pids += pair.pids
        log.info("worker pair ready: %s", {r.value: (m.pid, m.device) for r, m in pair.ready.items()})
        flow = self._pair_model_config().flow
        self.ladder = quality_ladder(flow.steps, flow.solver)
        self._pair = pair
        self._ready.set()
        self._free.set()

    # -- sessions ---------------------------------------------------------------------------
    def open_session(self, character: Character, seed: int, timeout: float | None = None,
                     start_clock: bool = True, sink: RecordSink | None = None,
                     on_skip: Callable[[int], None] | None = None) -> Session:
        """Prefill `character` on a free pair. `start_clock`: the unit clock starts now (the
        bench, tests); otherwise the caller starts `session.clock` with its first media.
        `sink` replaces the supervisor's record sink for this session; `on_skip(clock_unit)`
        hears of each skipped input unit."""
        timeout = self.cfg.ready_timeout_s if timeout is None else timeout
        with self._open_lock:  # one session at a time on the pair
            if not (self._ready.wait(timeout) and self._free.wait(timeout)):
                why = (f"the pair is restarting (last error: {self.last_error})" if self.failures
                       else "the pair is serving another session" if self._ready.is_set()
                       else "the pair is restarting")
                raise TimeoutError(f"no free worker pair within {timeout:.0f} s: {why}")
            sid, self._next_sid = self._next_sid, self._next_sid + 1
            self._free.clear()
            self._opening = opening = _Opening()
        self._send(Role.THINKER, StartSession(sid, CharacterSpec.of(character), seed))
        if not opening.done.wait(self.cfg.open_timeout_s):
            # a prefill that never ends holds the pair: the monitor restarts it
            what = f"did not finish the prefill within {self.cfg.open_timeout_s:g} s"
            self._stuck_open = Fault(Role.THINKER, self.pids[Role.THINKER], what, time.monotonic())
            raise TimeoutError(f"session {sid}: prefill not done within {self.cfg.open_timeout_s} s")
        if opening.error:
            raise RuntimeError(f"session {sid} could not start: {opening.error}")
        clock = UnitClock(opening.t0 if start_clock else None)
        session = Session(sid, clock,
                          send_input=lambda n, f, a, t, r: self._send(Role.THINKER, InputUnit(sid, n, f, a, t, r)),
                          request_end=lambda s: self._send(Role.THINKER, EndSession(s.id)),
                          sink=self.sink if sink is None else sink, output_queue=self.cfg.output_queue,
                          max_lag_units=self.cfg.max_lag_units, ladder=self.ladder,
                          controller=self.cfg.controller, on_skip=on_skip,
                          text_slots=self._pair_model_config().layout.text)
        self._session = session
        return session

    def measure(self) -> list[Margin]:
        """Warm-up units at the top and the lowest rung, one in flight at a time; the margin at
        each. The first `window_units` units of each rung fill the KV cache's window (and do the
        first allocations) and are not counted: the cost is that of the steady state."""
        c = self.cfg
        cfg = self._pair_model_config()
        margins = []
        for rung in sorted({0, len(self.ladder) - 1}):
            stats = RunStats()
            session = self.open_session(synthetic_character(cfg), seed=0, sink=stats)
            session.fixed_rung = rung
            skip = cfg.window_units
            for n in range(skip + c.warmup_units):
                session.submit(*synthetic_unit(cfg, 0, n))
                if session.outputs.get(timeout=c.open_timeout_s) is None:
                    raise TimeoutError(f"warm-up unit {n} at rung {self.ladder[rung]} took over "
                                       f"{c.open_timeout_s:.0f} s")
            end = session.close(timeout=c.open_timeout_s)
            if not end.ok:
                raise RuntimeError(f"the warm-up session failed: {end.reason}")
            # the workers inherit this process's cores: on one, they take turns
            cost = stats.unit_cost_ms(skip=skip, cores=len(os.sched_getaffinity(0)))
            r = self.ladder[rung]
            margins.append(Margin(rung=rung, steps=r.steps, solver=r.solver, cost_ms=cost,
                                  margin=UNIT_SECONDS * 1e3 / cost))
        # the step watchdog's limit: never below the setting, never below 4 units of this pair
        self._step_s = max(c.step_s, 4e-3 * margins[0].cost_ms)
        if self._pair is not None:
            self._pair.step_s = self._step_s
        return margins

    def _pair_model_config(self) -> ModelConfig:
        if self.model_cfg is None:  # a checkpoint: its config.json says what the pair runs
            from model.checkpoint import load_config
            self.model_cfg = load_config(self.cfg.checkpoint)
        return self.model_cfg

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
            if pair is None:  # its last start failed: try again after the back-off
                if self._closing.wait(max(0.0, self._retry_at - time.monotonic())):
                    return
                self._restart()
                continue
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
            if fault is None and self._stuck_open is not None:
                fault, self._stuck_open = self._stuck_open, None
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
        self._ready.clear()
        self._free.clear()
        pair.kill()
        self._pair = None
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
            log.info("worker fault during shutdown: %s; not restarting", fault)
            return
        log.error("worker fault: %s; restarting the pair", fault)
        self._restart()

    def _restart(self) -> None:
        try:
            self._spawn()
        except Exception as e:  # noqa: BLE001 - tried again after a back-off; /healthz tells
            self.failures += 1
            self.last_error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            delay = min(30.0, 2.0 ** (self.failures - 1))
            self._retry_at = time.monotonic() + delay
            log.error("the worker pair could not be restarted (%d in a row): %s; trying again in %g s",
                      self.failures, self.last_error, delay)
            return
        self.restarts += 1
        self.failures = 0
