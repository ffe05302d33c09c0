"""The supervisor: starts the thinker-performer pair, seats sessions in its `slots` (a batch
stepped at once), forms the pair's ticks from their units (ticks.py), watches the pair.

Runbook of the monitor thread (every `poll_s`):
  1. read what the workers sent: SessionOpened, UnitOutput, SolveReport, SessionClosed,
     WorkerFailed; route each to the session it belongs to (outputs by tick and slot: a
     session's unit in that tick, or nothing for a slot filled in while its unit was late);
     send the ticks whose late units have waited long enough
  2. judge liveness (pair.py): a dead worker (its sentinel), a hung one (heartbeat older than
     `hang_s`), a stuck step (longer than `step_s`) or a prefill past `open_timeout_s` is a
     fault; with the defaults each is noticed within a second
  3. on a fault: end its sessions with the reason, SIGKILL both workers, start a new pair;
     a pair that fails to start is tried again after a back-off (1, 2, 4 ... 30 s), and after
     `restart_attempts` failures in a row the supervisor is not `healthy` (the daemon's
     /healthz says 503, so an orchestrator restarts it); open_session waits for a pair
A fault noticed once close() has begun restarts nothing.
Messages to the workers (ticks, StartSession, EndSession) leave through one sender thread, in
order: a session's submit, called from an event loop, never waits on a pipe write.
Before it serves, `measure()` runs warm-up units through the pair at the top and the lowest
rung of the quality ladder (first allocations, thread pools) and returns the real-time margin
at each: the daemon logs and exports it, and never refuses to start for it.
On close(): the sessions end, both workers are asked to stop, then terminated, then killed,
and every one is reaped. A worker whose parent dies exits by itself (worker.py).
Model compute never runs here; this process only moves messages and keeps counts.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from model.attention import Backend
from model.config import FRAMES_PER_UNIT, UNIT_SECONDS, ModelConfig
from model.config import preset as preset_config
from model.flow import Rung, quality_ladder
from model.streaming import Character
from server.runtime.messages import (CharacterSpec, EndSession, InputTick, Role, SessionClosed,
                                     SessionOpened, SolveReport, StartSession, UnitOutput,
                                     WorkerFailed)
from server.runtime.ladder import ControllerConfig
from server.runtime.pair import ROLES, Fault, WorkerPair
from server.runtime.session import Session, SessionEnd
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.ticks import Tick, TickAssembler, Unit
from server.runtime.timings import RecordSink, RunStats
from server.runtime.transport import pick_shared_cache, pick_transport
from server.runtime.unit_clock import UnitClock
from server.runtime.worker import WorkerSpec

log = logging.getLogger("duplex.runtime")


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    preset: str = "cpu"  # model preset (model.config.PRESETS)
    checkpoint: str | None = None  # checkpoint folder; None = seeded dummy weights
    weights_seed: int = 0  # seed of the dummy weights
    transport: str = "auto"  # auto | gloo | ipc | nccl
    # one KV cache for both workers, the thinker's (no rows shipped): None = on ipc (one GPU);
    # gloo when True (shared memory); never nccl (transport.pick_shared_cache)
    shared_cache: bool | None = None
    threads: int = Field(1, ge=1)  # torch threads per worker on CPU (one core a role)
    slots: int = Field(1, ge=1)  # sessions the pair serves at once (one batched step a tick)
    # a tick waits this long at most for a session's late unit, then fills it in (ticks.py)
    tick_wait_s: float = Field(0.5 * UNIT_SECONDS, gt=0)
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
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.done = threading.Event()
        self.t0 = 0.0
        self.error = ""


class Supervisor:
    def __init__(self, cfg: RuntimeConfig, sink: RecordSink | None = None,
                 on_fault: Callable[[Fault], None] | None = None):
        self.cfg, self.sink, self.on_fault = cfg, sink, on_fault
        self.transport = pick_transport(cfg.transport)
        self.shared_cache = pick_shared_cache(self.transport, cfg.shared_cache)
        self.faults: list[Fault] = []
        self.restarts = 0
        self.all_pids: list[int] = []  # every worker ever started (tests check none is left)
        self._pair: WorkerPair | None = None
        self._sessions: dict[int, Session] = {}  # slot -> its session, until SessionClosed
        self._opening: _Opening | None = None
        self._next_sid = 1
        # (pair, role, message) for the sender thread; None stops it
        self._outbox: queue.SimpleQueue[tuple[WorkerPair, Role, Any] | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self._open_lock = threading.Lock()  # one prefill at a time
        self._lock = threading.RLock()  # the sessions, the slots, the ticks
        self._ticks: TickAssembler | None = None
        self._in_tick: dict[int, dict[int, int]] = {}  # tick -> {slot: its session's unit}
        self._ending: dict[int, int] = {}  # slot -> session: asked to end, units still waiting
        self._grid = UnitClock()  # the pair's: its calls' clocks start on its boundaries
        self._ready = threading.Event()  # a pair is up
        self._free = threading.Event()  # ... and has a free slot
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
        self._sender = threading.Thread(target=self._send_loop, name="supervisor-send", daemon=True)
        self._sender.start()
        try:
            self._spawn()
        except BaseException:
            self._outbox.put(None)  # no pair: the sender thread ends too
            raise
        self._monitor = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._monitor.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._monitor is not None:
            self._monitor.join()
        self._end_all("the daemon is shutting down")
        if self._sender is not None:  # what was queued goes first; a hung pipe is the pair's stop's
            self._outbox.put(None)
            self._sender.join(timeout=2.0)
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
        """Up with a free slot: open_session would start at once."""
        return self._ready.is_set() and self._free.is_set()

    @property
    def sessions(self) -> int:
        """Sessions seated (opening ones included)."""
        with self._lock:
            return len(self._sessions) + (self._opening is not None)

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
        # ticks in flight: each has a unit of some call, and each call at most max_lag_units
        spec = WorkerSpec(Role.THINKER, c.preset, c.checkpoint, c.weights_seed, self.transport,
                          store="", threads=c.threads, heartbeat_s=c.heartbeat_s,
                          max_pending=c.max_lag_units * c.slots, slots=c.slots, backend=c.backend,
                          cuda_graphs=c.cuda_graphs, compile=c.compile, shared_cache=self.shared_cache,
                          test_eval_delay_s=c.test_eval_delay_s)
        pair = WorkerPair(spec, c.hang_s, self._step_s)
        try:
            pair.start(c.ready_timeout_s)
        finally:
            self.all_pids += pair.pids
        log.info("worker pair ready: %s", {r.value: (m.pid, m.device) for r, m in pair.ready.items()})
        cfg = self._pair_model_config()
        self.ladder = quality_ladder(cfg.flow.steps, cfg.flow.solver)
        with self._lock:
            self._ticks = TickAssembler(c.slots, (FRAMES_PER_UNIT, cfg.video.height, cfg.video.width, 3),
                                        cfg.audio.samples_per_unit, c.tick_wait_s)
            self._pair = pair
            self._ready.set()
            self._update_free()

    # -- sessions ---------------------------------------------------------------------------
    def open_session(self, character: Character, seed: int, timeout: float | None = None,
                     start_clock: bool = True, sink: RecordSink | None = None, name: str = "",
                     on_skip: Callable[[int], None] | None = None,
                     on_end: Callable[[SessionEnd], None] | None = None) -> Session:
        """Prefill `character` in a free slot of the pair. `start_clock`: the unit clock starts
        now (the bench, tests); otherwise the caller starts `session.clock` with its first
        media (on the pair's grid either way). `sink` replaces the supervisor's record sink for
        this session; `name` (default: its number here), `on_skip` and `on_end`: Session's."""
        timeout = self.cfg.ready_timeout_s if timeout is None else timeout
        if not self._open_lock.acquire(timeout=timeout):
            raise TimeoutError(f"no free slot within {timeout:.0f} s: other sessions are starting")
        try:
            return self._open(character, seed, timeout, start_clock, sink, name,
                              dict(on_skip=on_skip, on_end=on_end))
        finally:
            self._open_lock.release()

    def _open(self, character: Character, seed: int, timeout: float, start_clock: bool,
              sink: RecordSink | None, name: str, hooks: dict[str, Any]) -> Session:
        if not (self._ready.wait(timeout) and self._free.wait(timeout)):
            why = (f"the pair is restarting (last error: {self.last_error})" if self.failures
                   else f"its {self.cfg.slots} slot(s) serve other sessions" if self._ready.is_set()
                   else "the pair is restarting")
            raise TimeoutError(f"no free slot on the worker pair within {timeout:.0f} s: {why}")
        with self._lock:
            sid, self._next_sid = self._next_sid, self._next_sid + 1
            slot = min(set(range(self.cfg.slots)) - set(self._sessions))
            self._opening = opening = _Opening(slot)
            self._update_free()
        self._send(Role.THINKER, StartSession(sid, slot, CharacterSpec.of(character), seed))
        if not opening.done.wait(self.cfg.open_timeout_s):
            # a prefill that never ends holds the pair: the monitor restarts it
            what = f"did not finish the prefill within {self.cfg.open_timeout_s:g} s"
            self._stuck_open = Fault(Role.THINKER, self.pids[Role.THINKER], what, time.monotonic())
            raise TimeoutError(f"session {sid}: prefill not done within {self.cfg.open_timeout_s} s")
        if opening.error:
            raise RuntimeError(f"session {sid} could not start: {opening.error}")
        clock = UnitClock(grid=self._grid)
        if start_clock:
            clock.start(opening.t0)
        session = Session(sid, name or str(sid), clock, self._pair_model_config().layout,
                          send_input=lambda n, c, f, a, t, r: self._put(slot, Unit(n, f, a, t, r, time.monotonic(),
                                                                                   clock.due(c))),
                          request_end=lambda s: self._end(slot, s),
                          sink=self.sink if sink is None else sink, output_queue=self.cfg.output_queue,
                          max_lag_units=self.cfg.max_lag_units, ladder=self.ladder,
                          controller=self.cfg.controller, **hooks)
        with self._lock:
            if self._opening is opening:  # not ended by a fault meanwhile
                self._sessions[slot] = session
                self._opening = None
                self._ticks.join(slot, started=lambda: clock.started)
            else:
                session.finish(False, opening.error or "the pair was restarted")
        return session

    # -- ticks ------------------------------------------------------------------------------
    def _put(self, slot: int, unit: Unit) -> bool:
        """False: the unit's tick has gone without it (the session skips it)."""
        with self._lock:
            if self._sessions.get(slot) is None or self._ticks is None:
                return True  # the session is ending: Session.submit raises from now on
            ticks = self._ticks.put(slot, unit, unit.at)
            if ticks is None:
                return False
            self._send_ticks(ticks)
            return True

    def _end(self, slot: int, session: Session) -> None:
        """The session hands over nothing more: once its last unit is in a tick, the thinker
        finishes it and frees the slot (SessionClosed)."""
        with self._lock:
            if self._sessions.get(slot) is not session or slot in self._ending:
                return
            self._ending[slot] = session.id
            self._ticks.close(slot)
            self._send_ticks([])

    def _send_ticks(self, ticks: list[Tick]) -> None:
        """Send `ticks` in order, then EndSession for each ending session whose units are all
        sent (after its last tick on the same pipe). Under self._lock."""
        for t in ticks:
            self._in_tick[t.tick] = t.units
            self._in_tick.pop(t.tick - 4 * self.cfg.max_lag_units * self.cfg.slots - 8, None)  # long answered
            self._send(Role.THINKER, InputTick(t.tick, t.frames, t.audio, t.texts, t.rung))
        for slot, sid in list(self._ending.items()):
            if self._ticks.drained(slot):
                del self._ending[slot]
                self._send(Role.THINKER, EndSession(sid, slot))

    def _update_free(self) -> None:
        if self._ready.is_set() and len(self._sessions) + (self._opening is not None) < self.cfg.slots:
            self._free.set()
        else:
            self._free.clear()

    def _end_all(self, reason: str) -> None:
        """Every session ends (not ok) with `reason`; the ticks start afresh."""
        with self._lock:
            for session in self._sessions.values():
                session.finish(False, reason)
            self._sessions.clear()
            self._ending.clear()
            self._in_tick.clear()
            if self._ticks is not None:
                self._ticks.reset()
            self._grid = UnitClock()
            if self._opening is not None and not self._opening.done.is_set():
                self._opening.error = reason
                self._opening.done.set()
            self._opening = None
            self._update_free()

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
            session.close()
            end = session.wait(timeout=c.open_timeout_s)
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
        """Queue `msg` for the current pair (never blocks); the sender thread writes it."""
        if (pair := self._pair) is not None:
            self._outbox.put((pair, role, msg))

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            pair, role, msg = item
            if pair is not self._pair:
                continue  # for a pair that has been replaced
            try:
                pair.send(role, msg)
            except (BrokenPipeError, ConnectionResetError, OSError) as e:
                log.warning("could not send %s to the %s: %s (the monitor handles the fault)",
                            type(msg).__name__, role.value, e)
            except Exception:  # noqa: BLE001 - a message that cannot be sent must not stop the rest
                log.exception("could not send %s to the %s", type(msg).__name__, role.value)

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
            with self._lock:  # ticks whose late units waited long enough
                if self._ticks is not None:
                    self._send_ticks(self._ticks.due(time.monotonic()))
            # 2. liveness
            fault = pair.fault()
            if fault is None and self._stuck_open is not None:
                fault, self._stuck_open = self._stuck_open, None
            if fault is not None:
                if fault.role in errors:
                    fault.what += f" after: {errors.pop(fault.role)}"
                self._recover(pair, fault)

    def _route(self, msg: Any) -> None:
        with self._lock:
            if isinstance(msg, SessionOpened) and self._opening is not None:
                if not self._sessions:  # the pair started afresh: its ticks count from here
                    self._ticks.reset(msg.tick)
                self._opening.t0 = time.monotonic()
                self._opening.done.set()
            elif isinstance(msg, UnitOutput):
                s = self._sessions.get(msg.slot)
                unit = self._in_tick.get(msg.unit, {}).get(msg.slot)
                if s is not None and s.id == msg.session and unit is not None:
                    msg.unit = unit
                    s.on_output(msg)
            elif isinstance(msg, SolveReport):
                for slot, unit in self._in_tick.get(msg.unit, {}).items():
                    if (s := self._sessions.get(slot)) is not None:
                        s.on_report(replace(msg, session=s.id, unit=unit))
            elif isinstance(msg, SessionClosed):
                s = self._sessions.get(msg.slot)
                if s is not None and s.id == msg.session:
                    del self._sessions[msg.slot]
                    self._ticks.leave(msg.slot)
                    s.finish(True, "closed after its last unit")
                    self._update_free()
                    if not self._sessions and self._opening is None:
                        self._grid = UnitClock()  # the next call starts the pair's clock afresh

    def _recover(self, pair: WorkerPair, fault: Fault) -> None:
        # 3. end the sessions with the reason, kill the pair, start a new one
        self._ready.clear()
        pair.kill()
        self._pair = None
        self.faults.append(fault)
        self._end_all(f"worker fault: {fault}")
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
