"""`duplex bench latency --sessions 1,2,4`: N synthetic calls at once, on one pair of N slots
(one batched step a tick) and on N pairs of one slot each, side by side, at the top rung and at
the lowest rung of the quality ladder (fixed for the run, so the two layouts do the same work).

Each call hands its units over on its own unit clock, the calls starting a 1/N unit apart (as
calls start at any moment): on one pair their clocks start on the pair's grid, so their units
fall due together; separate pairs keep the offsets.
Per run: each call's missed-or-skipped fraction (a unit is missed when either role handed it
on after the next unit was due) and signal-to-signal p99, the units delivered in time per
second per core, and the compute a call's unit costs (both roles' stages a tick, p50, over the
calls sharing the tick: what batching saves). A layout holds real time for N calls when every call misses at most
HOLDS_MISSED of its units. Writes bench/results/<date>_<device>_<preset>_sessions.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from typing import Any

import numpy as np

from bench.latency import consumed
from bench.model_step import device_name, git_commit
from bench.record import result_stem, write_json
from model.config import UNIT_SECONDS, preset
from server.runtime.session import Session, SessionEnded
from server.runtime.supervisor import RuntimeConfig, Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.timings import RunStats
from server.runtime.transport import pick_transport, worker_device

HOLDS_MISSED = 0.05
LAYOUTS = ("one_pair", "separate_pairs")
RUNGS = ("top", "lowest")


def drive_all(sessions: list[Session], cfg: Any, units: int) -> list[list[int]]:
    """Hand every call's unit n over at its due time, the calls started 1/N unit apart, from
    one thread; consumers drain the outputs. Returns each call's skipped units."""
    n_calls, t0 = len(sessions), time.monotonic() + 0.5
    for i, s in enumerate(sessions):
        s.clock.start(t0 + i * UNIT_SECONDS / n_calls)
    inputs = [[synthetic_unit(cfg, i, n) for n in range(8)] for i in range(n_calls)]  # made ahead
    skipped: list[list[int]] = [[] for _ in sessions]
    with consumed(sessions):
        for n in range(units):
            for i, s in enumerate(sessions):
                s.clock.wait_due(n)
                try:
                    if s.submit(*inputs[i][n % 8], clock_unit=n) is None:
                        skipped[i].append(n)
                except SessionEnded:
                    skipped[i].append(n)
    return skipped


def run(rc: RuntimeConfig, layout: str, n_calls: int, rung: str, units: int) -> dict[str, Any]:
    cfg = preset(rc.preset)
    pairs, slots = (1, n_calls) if layout == "one_pair" else (n_calls, 1)
    sups = [Supervisor(rc.model_copy(update={"slots": slots})) for _ in range(pairs)]
    stats = [RunStats() for _ in range(n_calls)]
    try:
        for sup in sups:
            sup.start()
            sup.measure()  # warm-up units, as the daemon runs before it serves
        sessions = []
        for i in range(n_calls):
            s = sups[i % pairs].open_session(synthetic_character(cfg, seed=1 + i), seed=i, start_clock=False,
                                             sink=stats[i])
            s.fixed_rung = 0 if rung == "top" else len(s.ladder) - 1
            sessions.append(s)
        steps = sessions[0].ladder[sessions[0].fixed_rung].steps
        started = time.monotonic()
        skipped = drive_all(sessions, cfg, units)
        seconds = time.monotonic() - started
    finally:
        for sup in sups:
            sup.close()
    calls = []
    for st, sk in zip(stats, skipped):
        missed = sum(any(r.late.values()) for r in st.records) + len(sk)
        calls.append({"missed_fraction": missed / units, "skipped": len(sk),
                      "signal_to_signal_p99_ms": st.signal_to_signal_ms()["p99"] if st.records else None})
    in_time = sum(units * (1 - c["missed_fraction"]) for c in calls)
    cores = len(os.sched_getaffinity(0))
    # both roles' compute a tick (transfers are waits, not work), shared by the calls in it
    work = [sum(v for st in r.stages.values() for k, v in st.items() if k != "transfer") / slots
            for st_ in stats for r in st_.records]
    return {"layout": layout, "pairs": pairs, "slots": slots, "calls": n_calls, "rung": rung, "steps": steps,
            "units": units, "seconds": round(seconds, 2), "per_call": calls,
            "worst_missed_fraction": max(c["missed_fraction"] for c in calls),
            "units_in_time_per_s_per_core": round(in_time / seconds / cores, 3),
            "compute_ms_per_call_unit": round(1e3 * float(np.median(work)), 2),
            # the first call's stages, p50 ms: on one pair they are the whole tick's
            "stages_p50_ms": {role: {k: round(q["p50"], 2) for k, q in st.items()}
                              for role, st in stats[0].stage_ms().items()},
            "holds_real_time": all(c["missed_fraction"] <= HOLDS_MISSED for c in calls)}


def main(args: argparse.Namespace) -> int:
    counts = sorted({int(x) for x in str(args.sessions).split(",")})
    layouts, rungs = args.layouts.split(","), args.rungs.split(",")
    if not set(layouts) <= set(LAYOUTS) or not set(rungs) <= set(RUNGS):
        raise SystemExit(f"--layouts takes {','.join(LAYOUTS)}, --rungs {','.join(RUNGS)}")
    rc = RuntimeConfig(preset=args.preset, transport=args.transport, threads=args.threads,
                       backend=args.backend, cuda_graphs=args.cuda_graphs, compile=args.compile,
                       ready_timeout_s=300.0)  # as the daemon: a cold compile takes minutes on 2 cores
    runs = []
    say = (lambda *a, **k: None) if args.json else print  # --json: the JSON alone on stdout
    say(f"{'calls':>5} {'rung':>6} {'layout':>15} {'worst missed':>13} {'s2s p99 ms':>11} {'in time/s/core':>15} "
        f"{'ms/call-unit':>13}")
    for rung in rungs:
        for n in counts:
            for layout in layouts:
                r = run(rc, layout, n, rung, args.units)
                runs.append(r)
                p99 = max((c["signal_to_signal_p99_ms"] or 0) for c in r["per_call"])
                say(f"{n:>5} {rung:>6} {layout:>15} {100 * r['worst_missed_fraction']:12.1f}% {p99:11.1f} "
                    f"{r['units_in_time_per_s_per_core']:15.2f} {r['compute_ms_per_call_unit']:13.1f}", flush=True)
    largest = {f"{layout}@{rung}": max([r["calls"] for r in runs if r["layout"] == layout and r["rung"] == rung
                                        and r["holds_real_time"]], default=0)
               for layout in layouts for rung in rungs}
    transport = pick_transport(args.transport)
    device = device_name(worker_device(transport, 1))
    result = {"bench": "latency-sessions", "preset": args.preset, "transport": transport, "device": device,
              "commit": git_commit(), "date": dt.datetime.now().isoformat(timespec="seconds"),
              "holds_missed": HOLDS_MISSED, "largest_calls_holding_real_time": largest, "runs": runs}
    stem = result_stem(args.out, device, args.preset, "sessions")
    write_json(result, stem)
    if args.json:
        print(json.dumps(result, indent=2))
    say("largest N holding real time: " + ", ".join(f"{k} {v}" for k, v in largest.items()))
    say(f"wrote {stem}.json")
    return 0
