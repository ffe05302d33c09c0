"""`duplex bench gpu-check` (`make gpu-check`): what only a GPU can show, in one run of at most
8 minutes, every record into one folder of bench/results/ and one table on the screen.

Steps, each a subprocess with its own time limit (the run stops at 8 minutes whatever is left):
  gpu tests         pytest -m gpu (bf16, kernels, CUDA graphs, CUDA transports)
  kernels           duplex bench kernels, the base and large head layouts, bf16
  model-step        base and large: bf16, Triton kernels, CUDA graphs: per-unit cost a role
  sessions N        base, a batch of N sessions (2, 4, 8) in one model against one session
                    (bench model-step --sessions N): the per-session cost and the gain
  latency           base on one worker pair over `ipc`: the real-time run of one call
  latency N calls   base, 1, 2, 4 and 8 calls at once on one pair over `ipc` (bench latency
                    --sessions): each call's misses and latency, at the top rung
`--dry-run` runs the same steps at CPU sizes (the
tiny preset, fp32, sdpa, gloo): it proves the script on any machine (tests/bench/test_gpu_check.py)
and measures nothing worth recording.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench.record import RESULTS

BUDGET_S = 480.0
SESSIONS = (2, 4, 8)
CALLS = (1, 2, 4, 8)  # calls at once on one pair
DUPLEX = [sys.executable, "-m", "server.cli"]


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float
    figure: Callable[[Path, str], str]  # (the step's record, its stdout) -> the table's figure


def _json_out(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def tests_figure(record: Path, _: str) -> str:
    suite = ET.parse(record).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n, failed, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "skipped"))
    failed += int(suite.get("errors", 0))
    return f"{n - failed - skipped} passed, {failed} failed, {skipped} skipped"


def kernels_figure(_: Path, stdout: str) -> str:
    pct = [r["methods"]["triton"]["pct_of_roofline"] for r in _json_out(stdout)["rows"] if "triton" in r["methods"]]
    return f"triton {min(pct):.0f}-{max(pct):.0f} % of roofline over {len(pct)} shapes" if pct else "no triton rows"


def model_step_figure(_: Path, stdout: str) -> str:
    r = _json_out(stdout)["per_unit_ms"]
    return f"thinker p50 {r['thinker']['p50']:.1f} ms, performer p50 {r['performer']['p50']:.1f} ms a unit"


def sessions_figure(_: Path, stdout: str) -> str:
    r = _json_out(stdout)
    n, many, gain = r["sessions"], r["paths"][str(r["sessions"])]["per_unit_ms"], r["throughput_gain_p50"]
    return (f"per session thinker {many['thinker']['p50'] / n:.1f} ms, performer "
            f"{many['performer']['p50'] / n:.1f} ms; gain {gain['thinker']:.2f}x / {gain['performer']:.2f}x")


def calls_figure(_: Path, stdout: str) -> str:
    r = _json_out(stdout)
    held = ", ".join(f"{x['calls']}: {100 * x['worst_missed_fraction']:.0f} % missed, s2s p99 "
                     f"{max(c['signal_to_signal_p99_ms'] or 0 for c in x['per_call']):.0f} ms" for x in r["runs"])
    return f"calls on one pair: {held}"


def latency_figure(_: Path, stdout: str) -> str:
    r = _json_out(stdout)
    s2s = r["signal_to_signal_ms"]
    return (f"{r['units_out']}/{r['units']} units out, {100 * r['missed_fraction']:.1f} % missed, "
            f"s2s p50 {s2s['p50']:.0f} / p99 {s2s['p99']:.0f} ms")


def steps(out: Path, dry_run: bool) -> list[Step]:
    rec = ["--json", "--out", str(out)]
    if dry_run:
        presets, fast = ("tiny",), []
        kernels, latency = ["--interpret-smoke"], ["--transport", "gloo", "--units", "10"]
    else:
        presets, fast = ("base", "large"), ["--cuda-graphs"]
        kernels = ["--presets", "base", "large", "--dtype", "bfloat16"]
        latency = ["--transport", "ipc", "--backend", "triton", "--cuda-graphs", "--units", "200"]

    def model_step(preset: str, units: int) -> list[str]:
        where = ["--device", "cpu", "--units", "3", "--warmup", "1"] if dry_run else \
            ["--device", "cuda", "--backend", "triton", "--units", str(units)]
        return [*DUPLEX, "bench", "model-step", "--preset", preset, *where]

    plan = [Step("gpu tests", [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={out / 'gpu-tests.xml'}"], 150, tests_figure),
            Step("kernels", [*DUPLEX, "bench", "kernels", *kernels, *rec], 45, kernels_figure)]
    plan += [Step(f"model-step {p}", [*model_step(p, 30), *fast, *rec], 75 if p == "large" else 45,
                  model_step_figure) for p in presets]
    plan += [Step(f"sessions {n} ({presets[0]})", [*model_step(presets[0], 10), "--sessions", str(n), *rec], 40,
                  sessions_figure) for n in SESSIONS]
    plan.append(Step(f"latency {presets[0]}, 1 call", [*DUPLEX, "bench", "latency", "--preset", presets[0],
                                                       *latency, *rec], 75, latency_figure))
    calls = ["--sessions", ",".join(map(str, CALLS)), "--layouts", "one_pair", "--rungs", "top",
             "--units", "10" if dry_run else "60"]
    plan.append(Step(f"latency {presets[0]}, calls on one pair",
                     [*DUPLEX, "bench", "latency", "--preset", presets[0], *latency, *calls, *rec],
                     120, calls_figure))
    return plan


def run(plan: list[Step], out: Path, budget_s: float = BUDGET_S) -> list[dict]:
    """Each step in turn within what is left of the budget; one row a step."""
    rows, deadline = [], time.monotonic() + budget_s
    for step in plan:
        left = deadline - time.monotonic()
        shown = ["duplex", *step.argv[3:]] if step.argv[:3] == DUPLEX else ["python", *step.argv[1:]]
        row = {"step": step.name, "command": " ".join(shown)}
        if left < 5:
            rows.append({**row, "status": "not run: the 8 minutes are spent", "seconds": 0.0, "figure": ""})
            continue
        t0 = time.monotonic()
        try:
            p = subprocess.run(step.argv, capture_output=True, text=True, timeout=min(step.limit_s, left))
        except subprocess.TimeoutExpired:
            rows.append({**row, "status": "timed out", "seconds": round(time.monotonic() - t0, 1), "figure": ""})
            continue
        seconds = round(time.monotonic() - t0, 1)
        (out / f"{step.name.split(' (')[0].replace(' ', '-')}.log").write_text(p.stdout + p.stderr)
        tests = step.name == "gpu tests"
        status = "ok" if p.returncode == 0 or (tests and p.returncode == 5) else f"failed (exit {p.returncode})"
        try:
            figure = step.figure(out / "gpu-tests.xml", p.stdout)
        except (ValueError, KeyError, IndexError, OSError, ET.ParseError) as e:
            figure = f"no figure: {type(e).__name__}: {e}"
        rows.append({**row, "status": status, "seconds": seconds, "figure": figure})
    return rows


def print_table(rows: list[dict]) -> None:
    w = max(len(r["step"]) for r in rows)
    for r in rows:
        print(f"  {r['step']:<{w}}  {r['status']:<12} {r['seconds']:6.1f} s  {r['figure']}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="duplex bench gpu-check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same steps at CPU sizes: proves the script")
    p.add_argument("--out", type=Path, default=None, help="folder for every record (default: a new one in bench/results/)")
    args = p.parse_args(argv)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d_%H%M")
    out = args.out or RESULTS / f"{stamp}_gpu-check{'-dry-run' if args.dry_run else ''}"
    out.mkdir(parents=True, exist_ok=True)
    rows = run(steps(out, args.dry_run), out)
    from bench.model_step import git_commit
    (out / "summary.json").write_text(json.dumps(
        {"bench": "gpu-check", "dry_run": args.dry_run, "commit": git_commit(), "date": stamp, "steps": rows},
        indent=2) + "\n")
    print(f"gpu-check{' --dry-run (CPU sizes: nothing here is a GPU figure)' if args.dry_run else ''}: {out}")
    print_table(rows)
    return 0 if all(r["status"] == "ok" for r in rows) else 1
