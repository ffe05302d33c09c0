"""Helpers of the runtime tests: run a session of synthetic units, check a process is gone."""
from __future__ import annotations

import time

from model.config import ModelConfig
from server.runtime.messages import UnitOutput
from server.runtime.session import Session, SessionEnd
from server.runtime.supervisor import RuntimeConfig, Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit

TINY = RuntimeConfig(preset="tiny", transport="gloo", ready_timeout_s=60)


def start_session(sup: Supervisor, cfg: ModelConfig, seed: int = 0) -> Session:
    return sup.open_session(synthetic_character(cfg), seed=seed, timeout=60)


def run_units(session: Session, cfg: ModelConfig, units: int, stream_seed: int = 0,
              timeout: float = 30.0, typed: dict[int, bytes] | None = None
              ) -> tuple[list[UnitOutput], SessionEnd]:
    """Hand over `units` synthetic units (with `typed` text: unit -> bytes) as fast as the pair
    takes them (never so fast that one is skipped); close; every output."""
    for n in range(units):
        wait_for_room(session, timeout)
        if n in (typed or {}):
            assert session.submit_text(typed[n].decode())
        assert session.submit(*synthetic_unit(cfg, stream_seed, n)) == n
    session.close()
    end = session.wait(timeout)
    outputs = []
    while (out := session.outputs.get(timeout=0)) is not None:
        outputs.append(out)
    return outputs, end


def wait_for_room(session: Session, timeout: float) -> None:
    """Until fewer than `max_lag_units` units are in flight: the next one would not be skipped."""
    deadline = time.monotonic() + timeout
    while session.units_in - session.units_out >= session.max_lag_units:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{session.units_in - session.units_out} units in flight for {timeout} s")
        time.sleep(0.002)


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (exited, not yet reaped by its parent)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
