"""Faults the pair itself causes, beyond a killed or stopped worker (test_runtime_recovery.py):
a step that never ends while the worker's heartbeat goes on (a hung gloo receive, a CUDA
kernel that never returns) is noticed within a second and the pair restarted; a pair that
cannot be restarted is tried again with a back-off and said to be unhealthy until it can;
gloo and the rendezvous store listen on loopback only."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from model.config import ModelConfig
from model.checkpoint import WEIGHTS, save_checkpoint
from model.duplex import build_model
from server.engine import RuntimeEngine
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from tests.server.pair_helpers import TINY, run_units, running, start_session


@pytest.mark.timeout(60)
def test_a_stuck_step_ends_the_session_within_a_second_and_the_pair_is_restarted(tiny_cfg: ModelConfig) -> None:
    # the performer's step takes 3 s (a test-only sleep per solver evaluation) while its
    # heartbeat thread goes on beating: only the step watchdog can see it
    with Supervisor(TINY.model_copy(update={"test_eval_delay_s": 1.0})) as sup:
        old = list(sup.pids.values())
        session = start_session(sup, tiny_cfg)
        t_in = time.monotonic()
        session.submit(*synthetic_unit(tiny_cfg, 0, 0))
        end = session.wait(timeout=10)
        assert not end.ok and "performer" in end.reason and "is stuck: one step has run" in end.reason, end.reason
        assert end.detected_at - t_in <= 1.0 + 0.1, f"noticed {end.detected_at - t_in:.2f} s after the unit went in"
        deadline = time.monotonic() + 30
        while not sup.up and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.up and sup.restarts == 1 and sup.healthy
        assert not any(running(p) for p in old), "the stuck pair is gone"


@pytest.mark.timeout(120)
def test_a_pair_that_cannot_restart_is_retried_and_unhealthy_until_it_can(tiny_cfg: ModelConfig,
                                                                          tmp_path: Path) -> None:
    save_checkpoint(build_model(tiny_cfg, seed=0), tmp_path)
    weights = (tmp_path / WEIGHTS).read_bytes()
    cfg = TINY.model_copy(update={"checkpoint": str(tmp_path), "restart_attempts": 2})
    with Supervisor(cfg) as sup:
        (tmp_path / WEIGHTS).write_bytes(b"not a safetensors file")  # the disk went bad
        sup._pair.kill()  # noqa: SLF001 - a worker dies: the pair must be restarted, and cannot be
        deadline = time.monotonic() + 60
        while sup.healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not sup.healthy and not sup.up and sup.failures >= 2, sup.last_error
        assert "model.safetensors" in sup.last_error, sup.last_error
        with pytest.raises(TimeoutError, match="restarting"):
            start_session(sup, tiny_cfg).wait(0)  # no pair to open a session on
        (tmp_path / WEIGHTS).write_bytes(weights)  # fixed: the next try succeeds
        deadline = time.monotonic() + 60
        while not sup.up and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sup.up and sup.healthy and sup.failures == 0
        _, end = run_units(start_session(sup, tiny_cfg), tiny_cfg, 3)
        assert end.ok, end.reason


@pytest.mark.timeout(60)
def test_a_prefill_that_times_out_restarts_the_pair_instead_of_holding_it(tiny_cfg: ModelConfig) -> None:
    with Supervisor(TINY.model_copy(update={"open_timeout_s": 0.001})) as sup:  # no prefill is that fast
        with pytest.raises(TimeoutError, match="prefill not done"):
            start_session(sup, tiny_cfg)
        deadline = time.monotonic() + 30
        while not (sup.restarts == 1 and sup.free) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.restarts == 1 and sup.free, "the pair is restarted and free again"
        assert "did not finish the prefill" in sup.faults[-1].what


async def test_one_pair_restarting_does_not_block_calls_on_the_others(tiny_cfg: ModelConfig) -> None:
    engine = RuntimeEngine(TINY.model_copy(update={"warmup_units": 1}), pairs=2)
    await engine.start()
    try:
        assert engine.available == 2
        engine._sups[0]._pair.kill()  # noqa: SLF001 - pair 0 dies and restarts
        deadline = time.monotonic() + 5
        while engine._sups[0].up and time.monotonic() < deadline:  # noqa: SLF001
            await asyncio.sleep(0.01)
        assert engine.available == 1 and engine.healthy
        session = await engine.start_session(synthetic_character(tiny_cfg))  # on pair 1, at once
        assert session.name.startswith("1.")
        session.close()
        await asyncio.get_running_loop().run_in_executor(None, session.wait, 10)
    finally:
        await engine.stop()


def _listening(pid: int) -> set[str]:
    """The local addresses of the TCP sockets `pid` listens on (from /proc/net/tcp{,6})."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # state LISTEN
                host = f[1].split(":")[0]
                found.add(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)) if table == "tcp"
                          else host)
    return found


def test_the_rendezvous_store_and_gloo_listen_on_loopback_only(supervisor: Supervisor,
                                                               tiny_cfg: ModelConfig) -> None:
    _, end = run_units(start_session(supervisor, tiny_cfg), tiny_cfg, 2)  # gloo's pairs are up
    assert end.ok
    loopback = {"127.0.0.1", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1
    import os
    for pid in [os.getpid(), *supervisor.pids.values()]:
        addresses = _listening(pid)
        assert addresses <= loopback, f"pid {pid} listens on {addresses}"
