"""Recovery: a worker killed (SIGKILL) or hung (SIGSTOP) mid-session is detected within a second,
the session ends with a reason that names it, the pair is restarted and serves the next
session; no worker process outlives the supervisor, or a supervisor that was killed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from model.config import ModelConfig
from server.runtime.messages import Role
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_unit
from tests.server.pair_helpers import TINY, run_units, running, start_session

DETECT_WITHIN_S = 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", [Role.THINKER, Role.PERFORMER], ids=lambda r: r.value)
@pytest.mark.parametrize("sig, what", [
    pytest.param(signal.SIGKILL, "was killed by SIGKILL", id="SIGKILL"),
    pytest.param(signal.SIGSTOP, "is hung: no heartbeat", id="SIGSTOP"),
])
def test_worker_fault_is_detected_within_a_second_and_the_next_session_succeeds(
        supervisor: Supervisor, tiny_cfg: ModelConfig, role: Role, sig: signal.Signals, what: str) -> None:
    faults_before, restarts_before = len(supervisor.faults), supervisor.restarts
    session = start_session(supervisor, tiny_cfg)
    for n in range(4):  # mid-session: units have gone through both workers
        session.submit(*synthetic_unit(tiny_cfg, 0, n))
    while session.units_out < 2:
        time.sleep(0.01)
    victim = supervisor.pids[role]
    t_fault = time.monotonic()
    os.kill(victim, sig)

    end = session.wait(timeout=5)
    assert not end.ok
    assert f"{role.value} (pid {victim}) {what}" in end.reason
    assert end.detected_at - t_fault <= DETECT_WITHIN_S, f"detected after {end.detected_at - t_fault:.2f} s"
    assert len(supervisor.faults) == faults_before + 1

    nxt = start_session(supervisor, tiny_cfg)  # waits for the restarted pair
    outputs, end2 = run_units(nxt, tiny_cfg, 5)
    assert end2.ok, end2.reason
    assert [o.unit for o in outputs] == list(range(5))
    assert supervisor.restarts == restarts_before + 1
    assert victim not in supervisor.pids.values() and not running(victim)


@pytest.mark.timeout(60)
def test_no_worker_process_is_left_after_close(tiny_cfg: ModelConfig) -> None:
    sup = Supervisor(TINY).start()
    try:
        os.kill(sup.pids[Role.PERFORMER], signal.SIGKILL)  # one restart: two pairs started
        deadline = time.monotonic() + 30
        while sup.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        _, end = run_units(start_session(sup, tiny_cfg), tiny_cfg, 3)
        assert end.ok, end.reason
    finally:
        sup.close()
    assert len(sup.all_pids) == 4
    assert [pid for pid in sup.all_pids if running(pid)] == []


DAEMON = """
import json, sys, time
from server.runtime.supervisor import RuntimeConfig, Supervisor
sup = Supervisor(RuntimeConfig(preset="tiny", transport="gloo")).start()
print(json.dumps([int(p) for p in sup.pids.values()]), flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(60)
def test_workers_exit_when_the_daemon_is_killed() -> None:
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        pids = json.loads(daemon.stdout.readline())  # type: ignore[union-attr]
        assert len(pids) == 2 and all(running(p) for p in pids)
        daemon.kill()  # no chance to clean up: the workers must notice by themselves
        daemon.wait()
        deadline = time.monotonic() + 3.0
        while any(running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [p for p in pids if running(p)] == []
    finally:
        daemon.kill()
