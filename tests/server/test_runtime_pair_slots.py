"""Two sessions on one thinker-performer pair (two processes, the gloo transport): each gets
exactly the outputs it gets alone (the single-process reference), with its own character,
input stream and noise seed; the second joins while the first runs and leaves before it, and
a third then takes its slot. Records, skips and ends stay each session's own."""
from __future__ import annotations

import time

import pytest
import torch

from model.config import UNIT_SECONDS, ModelConfig
from model.duplex import build_model
from model.streaming import Streamer
from server.runtime.messages import UnitOutput
from server.runtime.reference import run_single
from server.runtime.session import Session
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.timings import RunStats
from tests.server.pair_helpers import TINY

pytestmark = pytest.mark.timeout(180)


def _outputs(session: Session, want: int, timeout: float = 30.0) -> list[UnitOutput]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        out = session.outputs.get(timeout=max(0.0, deadline - time.monotonic()))
        assert out is not None, f"session {session.id}: {len(got)}/{want} outputs within {timeout} s"
        got.append(out)
    return got


def _assert_alone(streamer: Streamer, cfg: ModelConfig, got: list[UnitOutput], character_seed: int,
                  stream: int, seed: int) -> None:
    inputs = (tuple(map(torch.from_numpy, synthetic_unit(cfg, stream, n))) for n in range(len(got)))
    alone = run_single(streamer, synthetic_character(cfg, character_seed), seed, inputs)
    assert [o.unit for o in got] == list(range(len(got)))
    for o, ref in zip(got, alone):
        assert torch.equal(torch.from_numpy(o.text), ref.text[0]), f"unit {o.unit}"
        torch.testing.assert_close(torch.from_numpy(o.z_video), ref.z.video[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(o.audio), ref.audio[0], rtol=1e-5, atol=1e-5)


def test_two_sessions_on_one_pair_each_equal_the_session_alone(tiny_cfg: ModelConfig) -> None:
    # units go in ahead of their clocks, each call's unit n of tick t by clock unit (its clock
    # starts on the pair's grid at tick `first`); a tick waits up to 5 s for a call's unit
    cfg = TINY.model_copy(update={"slots": 2, "tick_wait_s": 5.0})
    stats = {name: RunStats() for name in "abc"}
    P = UNIT_SECONDS

    def open_at(sup: Supervisor, character_seed: int, seed: int, name: str, first: int, t0: float) -> Session:
        s = sup.open_session(synthetic_character(tiny_cfg, character_seed), seed=seed, sink=stats[name],
                             start_clock=False)
        s.clock.start(t0 + (first + 0.5) * P)  # its unit 0 starts at the grid's tick `first`
        s.fixed_rung = 0  # the top rung, as the reference runs
        return s

    with Supervisor(cfg) as sup:
        t0 = time.monotonic()
        a = open_at(sup, 11, 7, "a", 0, t0 - 0.5 * P)  # starts the grid at t0
        for n in range(3):  # a alone
            a.submit(*synthetic_unit(tiny_cfg, 0, n), clock_unit=n)
            _outputs(a, 1)
        b = open_at(sup, 12, 8, "b", 3, t0)
        assert not sup.free  # both slots taken
        got_a, got_b = [], []
        for n in range(5):  # a and b together
            assert a.submit(*synthetic_unit(tiny_cfg, 0, 3 + n), clock_unit=3 + n) == 3 + n
            assert b.submit(*synthetic_unit(tiny_cfg, 1, n), clock_unit=n) == n
            got_b += _outputs(b, 1)
            got_a += _outputs(a, 1)
        b.close()
        end_b = b.wait(timeout=10)
        assert end_b.ok and (end_b.units_in, end_b.units_out, end_b.skipped) == (5, 5, 0)
        assert sup.free
        c = open_at(sup, 13, 9, "c", 8, t0)  # in b's slot
        got_c = []
        for n in range(4):
            a.submit(*synthetic_unit(tiny_cfg, 0, 8 + n), clock_unit=8 + n)
            c.submit(*synthetic_unit(tiny_cfg, 2, n), clock_unit=n)
            got_a += _outputs(a, 1)
            got_c += _outputs(c, 1)
        a.close()
        c.close()
        assert a.wait(timeout=10).ok and c.wait(timeout=10).ok
    streamer = Streamer(build_model(tiny_cfg, seed=0))
    # a's first 3 outputs were taken above; its later ones equal units 3.. of a alone
    whole_a = run_single(streamer, synthetic_character(tiny_cfg, 11), 7,
                         (tuple(map(torch.from_numpy, synthetic_unit(tiny_cfg, 0, n))) for n in range(12)))
    for o in got_a:
        ref = whole_a[o.unit]
        assert torch.equal(torch.from_numpy(o.text), ref.text[0]), f"a unit {o.unit}"
        torch.testing.assert_close(torch.from_numpy(o.z_video), ref.z.video[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(o.audio), ref.audio[0], rtol=1e-5, atol=1e-5)
    assert [o.unit for o in got_a] == list(range(3, 12))
    _assert_alone(streamer, tiny_cfg, got_b, 12, 1, 8)
    _assert_alone(streamer, tiny_cfg, got_c, 13, 2, 9)
    # each session's per-unit records: its own units, both roles' stages
    for name, units in (("a", 12), ("b", 5), ("c", 4)):
        recs = stats[name].records
        assert sorted(r.unit for r in recs) == list(range(units)), name
        assert all(r.stages["performer"].get("solve", 0) > 0 for r in recs), name
