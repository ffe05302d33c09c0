"""`duplex bench latency`: the thinker-performer pair on a clock-driven synthetic input stream.

  duplex bench latency --preset cpu --transport gloo --units 500 [--json]
  duplex bench latency --preset tiny --sessions 1,2,4 --units 150   (bench/latency_sessions.py)

Runbook:
  1. start the supervised pair and run its measured start (warm-up units at the top and the
     lowest rung of the quality ladder: the margin at each), as the daemon does; not counted
  2. open a session; hand unit n over when the unit clock says it is due (a progress bar shows
     how far); the runtime picks each unit's rung and skips stale input while behind, as in a
     call; a consumer thread drains the outputs as a client would
  3. summarise: per role and stage p50/p90/p99, signal-to-signal, deadline misses per role
     (counted over all clock units: a skipped unit counts as missed), rungs and skips,
     transfer bytes and time per direction, real-time margin (160 ms / busiest role's time)
  4. roofline: FLOPs and bytes of each stage of one unit, against peak FLOP/s and memory
     bandwidth (--peak-flops / --peak-bw, or measured on one thread as each role runs)
  5. write bench/results/<date>_<device>_<preset>_<transport>.json and .png
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from bench.model_step import device_name, git_commit
from bench.record import RESULTS, result_stem, write_json
from bench.roofline import measure_peaks, roofline_table, stage_costs
from model.attention import BACKENDS
from model.config import UNIT_SECONDS, preset
from model.duplex import build_model
from model.streaming import Streamer
from server.runtime.session import Session, SessionEnded
from server.runtime.supervisor import RuntimeConfig, Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.timings import PERFORMER, THINKER, RunStats
from server.runtime.transport import TRANSPORTS, worker_device

# The role whose measured stage the roofline is set against (kv_update: the thinker's commit,
# a forward pass; the performer's kv_update is a copy of the shipped rows).
ROLE_OF = {"encode": THINKER, "language": THINKER, "kv_update": THINKER, "decode": THINKER,
           "solve": PERFORMER}
S2S_BUDGET_MS = 200.0


@contextmanager
def consumed(sessions: list[Session]) -> Iterator[None]:
    """Inside: a consumer thread a session takes its outputs as a client would. On leaving:
    each session is closed and waited for (its pair finishes the units handed over)."""
    stop = threading.Event()

    def consume(s: Session) -> None:
        while not stop.is_set():
            s.outputs.get(timeout=0.1)

    consumers = [threading.Thread(target=consume, args=(s,), name="consumer", daemon=True) for s in sessions]
    for c in consumers:
        c.start()
    try:
        yield
    finally:
        try:
            for s in sessions:
                s.close()
            for s in sessions:
                s.wait(timeout=30)
        finally:
            stop.set()
            for c in consumers:
                c.join()


def drive(session: Session, cfg: Any, units: int) -> tuple[list[float], list[int]]:
    """Hand unit n over at its due time; returns how late each hand-over was (ms) and the
    clock units the runtime skipped."""
    lateness, skipped = [], []
    bar = tqdm(total=units, unit="unit", desc="units", leave=False, mininterval=0.5, disable=None)
    with consumed([session]):
        try:
            for n in range(units):
                frames, audio = synthetic_unit(cfg, 0, n)  # made before the unit is due
                lateness.append(session.clock.wait_due(n) * 1e3)
                if session.submit(frames, audio, clock_unit=n) is None:
                    skipped.append(n)
                bar.update()
                bar.set_postfix(steps=session.ladder[session.rung].steps, skipped=len(skipped), refresh=False)
        except SessionEnded:
            pass  # a fault ended it: the reason is in the session's end
        finally:
            bar.close()
    return lateness, skipped


def summarise(stats: RunStats, units: int, skipped: list[int]) -> dict[str, Any]:
    busiest = stats.busiest_role_ms()
    worst = {q: max(busiest[r][q] for r in (THINKER, PERFORMER)) for q in ("p50", "p99")}
    misses = stats.deadline_misses()
    recs = sorted(stats.records, key=lambda x: x.clock_unit)
    steps = [r.steps for r in recs]
    return {
        "units": units,
        "units_out": len(stats.records),
        "units_skipped": len(skipped),
        "deadline_misses": misses,
        # a unit is missed when either role was late with it, or it was skipped: of all clock units
        "missed_fraction": (sum(any(r.late.values()) for r in recs) + len(skipped)) / units,
        "steps_per_unit": {str(s): steps.count(s) for s in sorted(set(steps), reverse=True)},
        "per_unit": {"clock_unit": [r.clock_unit for r in recs], "steps": steps,
                     "signal_to_signal_ms": [round(r.signal_to_signal * 1e3, 2) for r in recs],
                     "skipped": skipped},
        "signal_to_signal_ms": stats.signal_to_signal_ms(),
        "stages": stats.stage_ms(),
        "busy_ms_per_unit": busiest,
        "realtime_margin": {q: UNIT_SECONDS * 1e3 / worst[q] for q in worst},
        "transfer": stats.transfers(),
        "transfer_bytes_per_unit": {d: t["bytes_per_unit"] for d, t in stats.transfers().items()},
    }


def roofline(preset_name: str, device: torch.device, stages: dict[str, Any], peak_flops: float | None,
             peak_bw: float | None) -> dict[str, Any]:
    torch.set_num_threads(1)  # one core a role, as the workers run
    measured = "given"
    if peak_flops is None or peak_bw is None:
        f, b = measure_peaks(device)
        peak_flops, peak_bw, measured = peak_flops or f, peak_bw or b, "measured, 1 thread"
    cfg = preset(preset_name)
    costs = stage_costs(Streamer(build_model(cfg, seed=0, device=device)), synthetic_character(cfg))
    p50 = {name: stages[role][name]["p50"] for name, role in ROLE_OF.items() if name in stages.get(role, {})}
    return {"peak_flops": peak_flops, "peak_bytes_per_s": peak_bw, "peaks": measured,
            "stages": roofline_table(costs, p50, peak_flops, peak_bw)}


def print_report(r: dict[str, Any]) -> None:
    print(f"duplex bench latency: preset {r['preset']}, transport {r['transport']}, {r['units']} units, "
          f"device {r['device']}, commit {r['commit']}, {r['date']}")
    print(f"{'role':<10} {'stage':<10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for role, stages in r["stages"].items():
        for name, q in stages.items():
            print(f"{role:<10} {name:<10} {q['p50']:8.2f} {q['p90']:8.2f} {q['p99']:8.2f}")
    s2s = r["signal_to_signal_ms"]
    print(f"signal-to-signal  p50 {s2s['p50']:.1f} ms  p99 {s2s['p99']:.1f} ms  (budget {S2S_BUDGET_MS:.0f})")
    print(f"deadline misses   {r['deadline_misses']}  (units out {r['units_out']}/{r['units']}, "
          f"skipped {r['units_skipped']}; missed or skipped {100 * r['missed_fraction']:.1f} %)")
    print(f"heartbeat         longest gap {r['heartbeat_max_gap_s'] * 1e3:.0f} ms (hang limit 800 ms)")
    print("solver steps      " + ", ".join(f"{s}: {n} units" for s, n in r["steps_per_unit"].items()))
    ms = r["measured_start"]
    print("measured start    " + ", ".join(f"{m['steps']} steps {m['margin']:.2f}x ({m['cost_ms']:.1f} ms)"
                                           for m in ms))
    for d, t in r["transfer"].items():
        print(f"transfer {d:<19} {t['bytes_per_unit'] / 1024:8.1f} KiB/unit  p50 {t['p50_ms']:.2f} ms"
              f"  p99 {t['p99_ms']:.2f} ms")
    m = r["realtime_margin"]
    print(f"real-time margin  {m['p50']:.2f}x at p50, {m['p99']:.2f}x at p99 (160 ms / busiest role)")
    rf = r["roofline"]
    print(f"roofline ({rf['peaks']}: {rf['peak_flops'] / 1e9:.1f} GFLOP/s, "
          f"{rf['peak_bytes_per_s'] / 1e9:.1f} GB/s)")
    print(f"{'stage':<20} {'MFLOP':>9} {'MB':>8} {'bound':>8} {'roof ms':>8} {'p50 ms':>8} {'% roof':>7}")
    for name, s in rf["stages"].items():
        print(f"{ROLE_OF[name] + '.' + name:<20} {s['flops'] / 1e6:9.1f} {s['bytes'] / 1e6:8.2f} {s['bound']:>8} "
              f"{s['roofline_ms']:8.2f} {s['measured_p50_ms']:8.2f} {s['pct_of_roofline']:6.1f}%")


def plot(stats: RunStats, r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = sorted(stats.records, key=lambda x: x.clock_unit)
    units = [x.clock_unit for x in recs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.plot(units, [x.signal_to_signal * 1e3 for x in recs], lw=0.8, label="signal-to-signal")
    for role in (THINKER, PERFORMER):
        ax1.plot(units, [sum(x.stages[role].values()) * 1e3 for x in recs], lw=0.6, label=f"{role} busy")
    ax1.axhline(UNIT_SECONDS * 1e3, color="k", ls="--", lw=0.8, label="unit (160 ms)")
    ax1.axhline(S2S_BUDGET_MS, color="r", ls=":", lw=0.8, label="s2s budget (200 ms)")
    skipped = r["per_unit"]["skipped"]
    if skipped:
        ax1.plot(skipped, [0] * len(skipped), "x", color="r", ms=4, label=f"skipped ({len(skipped)})")
    ax1.set(xlabel="unit (clock)", ylabel="ms", title="latency over time")
    ax1.legend(fontsize=7, loc="upper left")
    steps_ax = ax1.twinx()
    steps_ax.step(units, [x.steps for x in recs], where="post", color="tab:green", lw=0.8, alpha=0.7)
    steps_ax.set_ylabel("solver steps (rung)", color="tab:green")
    steps_ax.set_ylim(0, max([x.steps for x in recs] + [1]) + 1)
    for role in (THINKER, PERFORMER):
        for name in r["stages"].get(role, {}):
            ax2.hist([x.stages[role][name] * 1e3 for x in recs if name in x.stages[role]], bins=60,
                     histtype="step", label=f"{role}.{name}")
    ax2.set(xlabel="ms", ylabel="units", title="per-stage durations", yscale="log")
    ax2.legend(fontsize=6)
    fig.suptitle(f"{r['preset']} / {r['transport']} / {r['device']} / {r['commit']} / {r['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="duplex bench latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--transport", default="auto", choices=("auto", *TRANSPORTS))
    ap.add_argument("--units", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (CPU)")
    ap.add_argument("--backend", default="sdpa", choices=BACKENDS, help="the model's kernels")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the steady-state steps (compiled before the run)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="replay the steady-state steps as CUDA graphs (units past the window)")
    ap.add_argument("--peak-flops", type=float, help="peak FLOP/s of one role's device (default: measured)")
    ap.add_argument("--peak-bw", type=float, help="peak memory bytes/s (default: measured)")
    ap.add_argument("--sessions", help="N calls at once, a comma list (1,2,4): on one pair of N slots and "
                                       "on N pairs, at the top and the lowest rung (bench/latency_sessions.py)")
    ap.add_argument("--layouts", default="one_pair,separate_pairs", help="with --sessions: which to run")
    ap.add_argument("--rungs", default="top,lowest", help="with --sessions: at which rungs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = ap.parse_args(argv)
    if args.sessions:
        from bench import latency_sessions
        return latency_sessions.main(args)

    cfg = preset(args.preset)
    stats = RunStats()
    rc = RuntimeConfig(preset=args.preset, transport=args.transport, threads=args.threads,
                       backend=args.backend, cuda_graphs=args.cuda_graphs, compile=args.compile)
    t0 = time.monotonic()
    with Supervisor(rc, sink=stats) as sup:
        startup = time.monotonic() - t0
        margins = sup.measure()
        session = sup.open_session(synthetic_character(cfg), seed=0)
        lateness, skipped = drive(session, cfg, args.units)
        end = session.wait(0)
        transport = sup.transport
        heartbeat_gap = sup.max_heartbeat_age
    device = worker_device(transport, 1)
    r: dict[str, Any] = {
        "preset": args.preset, "transport": transport, "device": device_name(device),
        "commit": git_commit(), "date": dt.datetime.now().isoformat(timespec="seconds"),
        "threads_per_worker": args.threads, "backend": args.backend, "cuda_graphs": args.cuda_graphs,
        "compile": args.compile,
        "startup_s": startup,
        "measured_start": [m.model_dump() for m in margins],
        "heartbeat_max_gap_s": heartbeat_gap,  # the hang detector's limit is set above it
        "session_end": {"ok": end.ok, "reason": end.reason, "dropped_outputs": end.dropped_outputs},
        "input_handover_late_ms": {"p50": float(np.percentile(lateness, 50)),
                                   "p99": float(np.percentile(lateness, 99))},
        **summarise(stats, args.units, skipped)}
    r["roofline"] = roofline(args.preset, device, r["stages"], args.peak_flops, args.peak_bw)
    stem = result_stem(args.out, r["device"], args.preset, transport)
    write_json(r, stem)
    plot(stats, r, stem.with_suffix(".png"))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_report(r)
        print(f"wrote {stem}.json and .png")
    return 0 if end.ok else 1
