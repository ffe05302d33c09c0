"""The worker pair as processes: start both workers, wait for READY, judge their liveness,
stop or kill them. Sessions are not this module's business (supervisor.py).

Liveness, checked by the supervisor's monitor every few tens of milliseconds:
  dead   the process has exited (Process.sentinel is ready; the exit code names the signal)
  hung   its heartbeat, written by a thread of the worker every `heartbeat_s` into shared
         memory, is older than `hang_s` (a SIGSTOPped process stops all its threads)
  stuck  one step (an event with model compute or a transfer: a unit in, rows, latents) has
         run for longer than `step_s` while the heartbeat goes on: a hung gloo receive, a
         CUDA kernel that never returns (the worker stamps each step's start in shared memory)
The largest heartbeat age seen is kept (`max_heartbeat_age`): `hang_s` is set from it.
The rendezvous is a file (torch.distributed's FileStore) in a private temporary folder, not a
TCP store (which listens on every interface whatever host it is given); gloo's own sockets
are on loopback (transport.py): nothing of the pair listens beyond this machine.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from server.runtime.messages import Ready, Role, Shutdown, WorkerFailed
from server.runtime.worker import WorkerSpec, worker_main

ROLES = (Role.THINKER, Role.PERFORMER)


@dataclass
class Fault:
    """Why a pair cannot go on: which worker, what happened, when it was noticed."""
    role: Role
    pid: int
    what: str
    detected_at: float  # time.monotonic()

    def __str__(self) -> str:
        return f"{self.role.value} (pid {self.pid}) {self.what}"


def describe_exit(code: int | None) -> str:
    if code is None:
        return "is running"
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class WorkerPair:
    def __init__(self, spec: WorkerSpec, hang_s: float, step_s: float):
        self.spec, self.hang_s, self.step_s = spec, hang_s, step_s
        self.ctx = mp.get_context("spawn")
        self.procs: dict[Role, Any] = {}
        self.conns: dict[Role, Connection] = {}
        self.ready: dict[Role, Ready] = {}
        self._heartbeats: Any = None
        self._steps: Any = None  # per role: time.monotonic() when its current step began; 0 idle
        self._rendezvous: str | None = None  # the FileStore's folder, removed with the pair
        self.max_heartbeat_age = 0.0
        # kill() runs from the supervisor's reader (a fault) and from whoever stops the pair;
        # two at once closed one pipe twice (EBADF, seen in CI)
        self._kill_lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.pid is not None]

    def start(self, timeout: float) -> None:
        """Spawn both workers and wait until both are READY (the model loaded, the transport up)."""
        # 1. the rendezvous: a file in a folder only this user can read
        self._rendezvous = tempfile.mkdtemp(prefix="duplex-rendezvous-")
        # 2. shared heartbeats, a control pipe per worker, a side pipe between them (ipc)
        self._heartbeats = self.ctx.Array("d", [time.monotonic()] * len(ROLES), lock=False)
        self._steps = self.ctx.Array("d", [0.0] * len(ROLES), lock=False)
        side = dict(zip(ROLES, self.ctx.Pipe()))
        for role in ROLES:
            ours, theirs = self.ctx.Pipe()
            spec = replace(self.spec, role=role, store=os.path.join(self._rendezvous, "store"))
            self.procs[role] = self.ctx.Process(
                target=worker_main, args=(spec, theirs, self._heartbeats, self._steps, side[role]),
                name=f"duplex-{role.value}", daemon=True)
            self.conns[role] = ours
        for role in ROLES:
            self.procs[role].start()
        for c in side.values():
            c.close()
        # 3. READY from both, or the first failure
        deadline = time.monotonic() + timeout
        while len(self.ready) < len(ROLES):
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise TimeoutError(f"worker pair not READY within {timeout:.0f} s (ready: "
                                   f"{sorted(r.value for r in self.ready)}); raise ready_timeout_s "
                                   f"for a large model or check the workers' logs")
            for role in ROLES:
                if self.conns[role].poll():
                    msg = self.conns[role].recv()
                    if isinstance(msg, WorkerFailed):
                        self.kill()
                        raise RuntimeError(f"{role.value} failed to start:\n{msg.error}")
                    if isinstance(msg, Ready):
                        self.ready[role] = msg
                elif self.procs[role].exitcode is not None:
                    self.kill()
                    raise RuntimeError(f"{role.value} {describe_exit(self.procs[role].exitcode)} "
                                       f"before READY")
            wait(list(self.conns.values()) + [p.sentinel for p in self.procs.values()],
                 timeout=min(left, 0.05))

    def fault(self) -> Fault | None:
        """The first dead, hung or stuck worker, or None while both are alive and beating."""
        now = time.monotonic()
        for i, role in enumerate(ROLES):
            p = self.procs[role]
            if p.exitcode is not None:
                return Fault(role, p.pid, describe_exit(p.exitcode), now)
            age = now - self._heartbeats[i]
            self.max_heartbeat_age = max(self.max_heartbeat_age, age)
            if age > self.hang_s:
                return Fault(role, p.pid, f"is hung: no heartbeat for {age:.2f} s "
                                          f"(limit {self.hang_s:.2f} s)", now)
            began = self._steps[i]
            if began and now - began > self.step_s:
                return Fault(role, p.pid, f"is stuck: one step has run for {now - began:.2f} s "
                                          f"(limit {self.step_s:.2f} s)", now)
        return None

    def send(self, role: Role, msg: Any) -> None:
        self.conns[role].send(msg)

    def stop(self, timeout: float = 5.0) -> None:
        """Ask both to shut down, then terminate and finally kill what is left; reap all."""
        for role in ROLES:
            try:
                self.send(role, Shutdown())
            except (BrokenPipeError, OSError):
                pass  # already gone
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
                p.join(1.0)
        self.kill()

    def kill(self) -> None:
        """SIGKILL whatever still runs (a SIGSTOPped process dies too) and reap it; safe to
        call from two threads at once, and again."""
        with self._kill_lock:
            for p in self.procs.values():
                if p.pid is not None and p.exitcode is None:
                    p.kill()
            for p in self.procs.values():
                if p.pid is not None:
                    p.join(5.0)
            for c in self.conns.values():
                c.close()
            if self._rendezvous is not None:
                shutil.rmtree(self._rendezvous, ignore_errors=True)
                self._rendezvous = None
