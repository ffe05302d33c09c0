"""Per-stage timings: one context manager that feeds a sink, and the per-unit record the
supervisor assembles from both workers' reports.

Stages of unit n (seconds): encode (observe: the causal encoder + obs_n's KV), language (the
k text slots), kv_update (the KV of the rows shipped with unit n: the thinker's commit of
resp_{n-1}, the performer's append of resp_{n-1}, obs_n, text_n), transfer
(send start on one side to payload received on the other, attributed to the receiver),
solve (the performer's flow-matching steps), decode (the causal VAE decode). Timestamps are
`time.monotonic_ns()`, one system-wide clock on Linux, so marks from both processes compare.
No metrics library here: the serving issue turns `UnitRecord`s into Prometheus metrics.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

STAGES = ("encode", "language", "kv_update", "transfer", "solve", "decode")
THINKER, PERFORMER = "thinker", "performer"
DOWN, UP = "thinker->performer", "performer->thinker"  # KV rows down, latents up


class StageTimer:
    """Accumulates stage durations per unit: `with timer.stage(n, "solve"): ...`."""

    def __init__(self) -> None:
        self._open: dict[int, dict[str, float]] = defaultdict(dict)

    @contextmanager
    def stage(self, unit: int, name: str) -> Iterator[None]:
        if name not in STAGES:
            raise ValueError(f"stage {name!r} is not one of {STAGES}; add it there first")
        t = time.perf_counter()
        try:
            yield
        finally:
            d = self._open[unit]
            d[name] = d.get(name, 0.0) + time.perf_counter() - t

    def add(self, unit: int, name: str, seconds: float) -> None:
        """A duration measured elsewhere (a transfer, from the sender's timestamp)."""
        d = self._open[unit]
        d[name] = d.get(name, 0.0) + seconds

    def take(self, unit: int) -> dict[str, float]:
        """The stages of `unit`, removed from the timer (it holds only units in flight)."""
        return self._open.pop(unit, {})

    def clear(self) -> None:
        self._open.clear()

    def __len__(self) -> int:
        """Units with stages not yet taken: only units in flight, never the whole session."""
        return len(self._open)


@dataclass
class Transfer:
    """One tensor message: bytes on the wire and send-start -> received seconds."""
    nbytes: int
    seconds: float


@dataclass
class UnitRecord:
    """Everything measured about one unit of one session, from both roles."""
    session: int
    unit: int
    stages: dict[str, dict[str, float]]  # role -> stage -> seconds
    transfers: dict[str, Transfer]  # direction -> transfer
    signal_to_signal: float  # input unit complete -> its output frames ready to the consumer
    late: dict[str, bool]  # role -> handed unit n on after its deadline
    t_input: float  # monotonic seconds: when the input unit was complete
    clock_unit: int = 0  # the unit on the clock it answers (model units skip skipped ones)
    rung: int = 0  # the quality ladder's rung it ran at (0: the top)
    steps: int = 0  # that rung's solver steps


RecordSink = Callable[[UnitRecord], None]


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in qs}


@dataclass
class RunStats:
    """A RecordSink that keeps every record and summarises them (the bench, the tests)."""
    records: list[UnitRecord] = field(default_factory=list)

    def __call__(self, record: UnitRecord) -> None:
        self.records.append(record)

    def stage_ms(self) -> dict[str, dict[str, dict[str, float]]]:
        """role -> stage -> {p50, p90, p99} in milliseconds."""
        samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.records:
            for role, stages in r.stages.items():
                for name, s in stages.items():
                    samples[role][name].append(s * 1e3)
        return {role: {name: percentiles(v) for name, v in sorted(st.items())}
                for role, st in sorted(samples.items())}

    def signal_to_signal_ms(self) -> dict[str, float]:
        return percentiles([r.signal_to_signal * 1e3 for r in self.records])

    def deadline_misses(self) -> dict[str, int]:
        return {role: sum(r.late.get(role, False) for r in self.records)
                for role in (THINKER, PERFORMER)}

    def transfers(self) -> dict[str, dict[str, float]]:
        """direction -> bytes per unit (mean) and p50/p99 milliseconds."""
        out: dict[str, dict[str, float]] = {}
        for d in (DOWN, UP):
            ts = [r.transfers[d] for r in self.records if d in r.transfers]
            if ts:
                ms = percentiles([t.seconds * 1e3 for t in ts], (50, 99))
                out[d] = {"bytes_per_unit": float(np.mean([t.nbytes for t in ts])),
                          "p50_ms": ms["p50"], "p99_ms": ms["p99"]}
        return out

    def unit_cost_ms(self, skip: int = 0, cores: int = 2) -> float:
        """A unit's cost to real time (p50 ms, the first `skip` records left out): the busier
        worker, or the loop-carried chain commit(n-1) -> observe(n) -> speak(n) -> ship ->
        solve(n) -> back, whichever is longer (DESIGN: "Beware the loop-carried chain"); on
        one core (`cores` < 2) the two workers cannot overlap: both workers' time."""
        recs = sorted(self.records, key=lambda r: r.unit)[skip:]
        if not recs:
            raise ValueError(f"no unit records past the first {skip}: nothing was measured")

        def cost(r: UnitRecord) -> float:
            th, pf = r.stages.get(THINKER, {}), r.stages.get(PERFORMER, {})
            chain = (th.get("kv_update", 0) + th.get("encode", 0) + th.get("language", 0)
                     + pf.get("transfer", 0) + pf.get("kv_update", 0) + pf.get("solve", 0)
                     + th.get("transfer", 0))
            if cores < 2:
                return sum(th.values()) + sum(pf.values())
            return max(chain, sum(th.values()), sum(pf.values()))
        return float(np.median([cost(r) for r in recs])) * 1e3

    def busiest_role_ms(self) -> dict[str, float]:
        """Per role, p50 and p99 of the summed stage time per unit."""
        out = {}
        for role in (THINKER, PERFORMER):
            out[role] = percentiles([sum(r.stages.get(role, {}).values()) * 1e3 for r in self.records],
                                    (50, 99))
        return out
