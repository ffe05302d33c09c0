"""`duplex bench model-step`: time each streaming stage of one session in one process.

Stages per unit: observe (encode + obs KV), speak (k text slots), solver_step (one velocity
evaluation of the resp chunk), commit (clean resp KV), decode (VAE: 4 frames + 160 ms audio).
Roles: the thinker runs observe + speak + commit + decode, the performer runs `steps` solver
steps. With --threads 1 each role's sum is what one core would spend on it (the two roles run
on separate cores in the daemon). Warm-up units are not counted. JSON goes to bench/results/.
--compare runs eager and the torch.compile path (model/compiled.py) on one model, unit by
unit in alternating order, and records both, the speedup, the first compile and the peaks.
--sessions N runs one session and a batch of N (each joined on its own, as a pair's slots
are: Streamer.join), alternating unit by unit, and records the cost a unit per session of each
and the throughput gain of the batch (N units of the single session against one of the batch).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from model.attention import BACKENDS, Backend
from model.config import preset
from model.duplex import DuplexModel, Latents, build_model
from model.streaming import Character, Streamer

RESULTS = Path(__file__).parent / "results"
STAGES = ("observe", "speak", "solver_step", "commit", "decode")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, (time.perf_counter() - t0) * 1000.0


class _Session:
    """One Streamer, its session(s) and fixed inputs: `unit(n)` runs and times one unit's
    stages. batch > 1: that many sessions, each joined on its own (a pair's slots)."""

    def __init__(self, model: DuplexModel, device: torch.device, dtype: torch.dtype, batch: int = 1,
                 **streamer: bool):
        cfg = model.cfg
        self.device, self.batch = device, batch
        self.s = s = Streamer(model, **streamer)
        self.st = s.new_state(batch)
        g = torch.Generator(device="cpu").manual_seed(0)
        voice = cfg.character.voice_units * cfg.audio.samples_per_unit
        character = Character("bench", torch.rand(3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1,
                              torch.rand(voice, generator=g) * 2 - 1, "bench persona")
        if batch == 1:
            s.prefill(self.st, character)
        for slot in range(batch if batch > 1 else 0):
            s.join(self.st, slot, character)
        self.frames = (torch.rand(batch, 4, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1).to(device, dtype)
        self.audio = (torch.rand(batch, cfg.audio.samples_per_unit, generator=g) * 2 - 1).to(device, dtype)

    def unit(self, n: int) -> tuple[float, ...]:
        """Milliseconds of each stage of unit n, in STAGES order."""
        s, st, device = self.s, self.st, self.device
        _, t_obs = _timed(lambda: s.observe(st, self.frames, self.audio), device)
        _, t_speak = _timed(lambda: s.speak(st), device)
        noise = s.sample_noise(self.batch, torch.Generator(device=device).manual_seed(n))
        t_step = torch.full((self.batch,), 0.5, device=device)
        _, t_solver = _timed(lambda: s.velocity(st.cache, n, noise, t_step), device)
        z = Latents(*noise)
        _, t_commit = _timed(lambda: s.commit(st, z), device)
        _, t_decode = _timed(lambda: s.decode(st, z), device)
        return t_obs, t_speak, t_solver, t_commit, t_decode


def _stats(a: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def _summary(times: dict[str, list[float]], steps: int) -> dict[str, dict]:
    """Per-stage and per-role p50/p99 of the timed units."""
    arr = {k: np.array(v) for k, v in times.items()}
    thinker = arr["observe"] + arr["speak"] + arr["commit"] + arr["decode"]
    performer = arr["solver_step"] * steps
    return {"stages_ms": {k: _stats(a) for k, a in arr.items()},
            "per_unit_ms": {"thinker": _stats(thinker), "performer": _stats(performer)}}


def _header(preset_name: str, device: torch.device, dtype: torch.dtype, units: int, warmup: int,
            backend: Backend) -> dict:
    cfg = preset(preset_name)
    return {
        "bench": "model-step", "preset": preset_name, "device": device_name(device),
        "device_type": device.type, "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "units": units, "warmup": warmup, "backend": backend,
        "solver_steps": cfg.flow.steps, "resolution": [cfg.video.width, cfg.video.height],
        "tokens_per_unit": cfg.layout.unit, "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def run(preset_name: str, device: torch.device, dtype: torch.dtype, units: int, warmup: int,
        backend: Backend = "sdpa", cuda_graphs: bool = False, compile: bool = False) -> dict:
    cfg = preset(preset_name)
    model = build_model(cfg, seed=0, device=device, dtype=dtype)
    model.transformer.backend = backend
    session = _Session(model, device, dtype, cuda_graphs=cuda_graphs, compile=compile)
    if compile:
        session.s.compiled.warm_up()
    times: dict[str, list[float]] = {k: [] for k in STAGES}
    for n in range(warmup + units):
        stage_ms = session.unit(n)
        if n >= warmup:
            for k, v in zip(STAGES, stage_ms):
                times[k].append(v)
    return {**_header(preset_name, device, dtype, units, warmup, backend),
            "cuda_graphs": cuda_graphs, "compile": compile, **_summary(times, cfg.flow.steps),
            "budget_ms": 160}


def _interleaved(runs: dict[str, _Session], units: int, warmup: int, solver_steps: int) -> dict[str, dict]:
    """Each unit on every run, in alternating order (load and clock drift hit all alike):
    per run, the summary of its units after `warmup`."""
    times = {name: {k: [] for k in STAGES} for name in runs}
    for n in range(warmup + units):
        for name, session in list(runs.items())[::1 if n % 2 else -1]:
            stage_ms = session.unit(n)
            if n >= warmup:
                for k, v in zip(STAGES, stage_ms):
                    times[name][k].append(v)
    return {name: _summary(t, solver_steps) for name, t in times.items()}


def compare(preset_name: str, device: torch.device, dtype: torch.dtype, units: int, warmup: int,
            backend: Backend = "sdpa") -> dict:
    """Eager and the compiled path (Streamer(compile=True)) side by side on one model: each
    unit runs on both, in alternating order, so that load and clock drift hit both alike.
    Also records the first compile (warm_up) and the device's measured peaks (roofline.py)."""
    from bench.roofline import measure_peaks  # imports the server's synthetic media: only here

    cfg = preset(preset_name)
    model = build_model(cfg, seed=0, device=device, dtype=dtype)
    model.transformer.backend = backend
    eager = _Session(model, device, dtype)
    fast = _Session(model, device, dtype, compile=True)
    cache_dir = fast.s.compiled.cache_dir
    cached = sum(1 for f in cache_dir.rglob("*") if f.is_file())  # 0: a cold compile
    t0 = time.perf_counter()
    fast.s.compiled.warm_up()
    compile_s = time.perf_counter() - t0
    paths = _interleaved({"eager": eager, "compiled": fast}, units, warmup, cfg.flow.steps)
    speedup = {role: round(paths["eager"]["per_unit_ms"][role]["p50"]
                           / paths["compiled"]["per_unit_ms"][role]["p50"], 3)
               for role in ("thinker", "performer")}
    speedup.update({k: round(paths["eager"]["stages_ms"][k]["p50"] / paths["compiled"]["stages_ms"][k]["p50"], 3)
                    for k in STAGES})
    peak_flops, peak_bw = measure_peaks(device)
    return {**_header(preset_name, device, dtype, units, warmup, backend), "bench": "model-step-compare",
            "compile_s": round(compile_s, 2), "compile_cache_dir": str(cache_dir),
            "compile_cache_files_before": cached,
            "compile_fell_back": fast.s.compiled.failed,
            "peak_gflops": round(peak_flops / 1e9, 2), "peak_gbytes_s": round(peak_bw / 1e9, 2),
            "paths": paths, "speedup_p50": speedup, "budget_ms": 160}


def batched(preset_name: str, device: torch.device, dtype: torch.dtype, units: int, warmup: int,
            sessions: int, backend: Backend = "sdpa") -> dict:
    """One session and a batch of `sessions` on one model, eager, each unit run on both in
    alternating order. The gain: `sessions` units of the one session against one unit of the batch."""
    cfg = preset(preset_name)
    model = build_model(cfg, seed=0, device=device, dtype=dtype)
    model.transformer.backend = backend
    paths = _interleaved({"1": _Session(model, device, dtype),
                          f"{sessions}": _Session(model, device, dtype, batch=sessions)}, units, warmup, cfg.flow.steps)
    gain = {role: round(sessions * paths["1"]["per_unit_ms"][role]["p50"]
                        / paths[f"{sessions}"]["per_unit_ms"][role]["p50"], 3)
            for role in ("thinker", "performer")}
    return {**_header(preset_name, device, dtype, units, warmup, backend), "bench": "model-step-sessions",
            "sessions": sessions, "paths": paths, "throughput_gain_p50": gain, "budget_ms": 160}


def _print_batched(result: dict) -> None:
    n = result["sessions"]
    one, many, gain = result["paths"]["1"], result["paths"][f"{n}"], result["throughput_gain_p50"]
    print(f"  {'':<12} {'1 session p50':>14}  {f'{n} sessions p50':>15}  {'per session':>11}  throughput gain")
    for role in ("thinker", "performer"):
        a, b = one["per_unit_ms"][role]["p50"], many["per_unit_ms"][role]["p50"]
        print(f"  {role:<12} {a:14.2f}  {b:15.2f}  {b / n:11.2f}  {gain[role]:6.2f}x")


def _print_compare(result: dict) -> None:
    eager, fast, up = result["paths"]["eager"], result["paths"]["compiled"], result["speedup_p50"]
    before = result["compile_cache_files_before"]
    print(f"  first compile {result['compile_s']:.1f} s (inductor cache "
          f"{f'with {before} files' if before else 'empty: cold'})"
          f"{'; fell back to eager: ' + ', '.join(result['compile_fell_back']) if result['compile_fell_back'] else ''}"
          f"   measured peak {result['peak_gflops']:.1f} GFLOP/s, {result['peak_gbytes_s']:.1f} GB/s")
    print(f"  {'':<12} {'eager p50':>10} {'p99':>8}  {'compiled p50':>12} {'p99':>8}  speedup p50")
    rows = [(k, eager["stages_ms"][k], fast["stages_ms"][k]) for k in STAGES]
    rows += [(r, eager["per_unit_ms"][r], fast["per_unit_ms"][r]) for r in ("thinker", "performer")]
    for k, e, f in rows:
        print(f"  {k:<12} {e['p50']:10.2f} {e['p99']:8.2f}  {f['p50']:12.2f} {f['p99']:8.2f}  {up[k]:6.2f}x")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="duplex bench model-step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (one core a role: 1)")
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--warmup", type=int, default=None,
                   help="units before timing (default 5; with --cuda-graphs, the window + 5: graphs "
                        "replay only once the KV cache is in steady state)")
    p.add_argument("--backend", default="sdpa", choices=BACKENDS, help="the model's kernels")
    p.add_argument("--cuda-graphs", action="store_true", help="replay the steady-state steps as CUDA graphs")
    p.add_argument("--compile", action="store_true",
                   help="run the steady-state steps through torch.compile (model/compiled.py)")
    p.add_argument("--compare", action="store_true",
                   help="eager and --compile side by side, interleaved unit by unit, with the speedup, "
                        "the first compile's seconds and the device's measured peaks")
    p.add_argument("--sessions", type=int, default=None,
                   help="one session and a batch of N side by side, interleaved unit by unit (eager)")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.set_num_threads(args.threads)
    if args.cuda_graphs and (args.compile or args.compare):
        p.error("--cuda-graphs and --compile/--compare: pick one fast path")
    if args.sessions is not None and (args.sessions < 2 or args.cuda_graphs or args.compile or args.compare):
        p.error("--sessions N: N >= 2, eager (without --cuda-graphs, --compile or --compare)")
    steady = args.cuda_graphs or args.compile or args.compare  # fast paths start at unit W
    warmup = args.warmup if args.warmup is not None else (
        preset(args.preset).layout.window_units + 5 if steady else 5)
    bench = "model-step-compare" if args.compare else "model-step"
    if args.sessions:
        bench = f"model-step-sessions{args.sessions}"
        result = batched(args.preset, device, dtype, args.units, warmup, args.sessions, args.backend)
    elif args.compare:
        result = compare(args.preset, device, dtype, args.units, warmup, args.backend)
    else:
        result = run(args.preset, device, dtype, args.units, warmup, args.backend, args.cuda_graphs,
                     args.compile)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{result['date'][:10]}_{bench}_{args.preset}_{device.type}_{args.threads}t.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{bench}  preset={args.preset}  device={result['device']}  dtype={result['dtype']}  "
          f"threads={result['threads']}  units={args.units}  commit={result['commit']}")
    if args.compare or args.sessions:
        (_print_batched if args.sessions else _print_compare)(result)
        print(f"  written: {args.out / name}")
        return 0
    for k, v in result["stages_ms"].items():
        print(f"  {k:<12} p50 {v['p50']:8.2f} ms   p99 {v['p99']:8.2f} ms")
    for role, v in result["per_unit_ms"].items():
        print(f"  {role:<12} p50 {v['p50']:8.2f} ms   p99 {v['p99']:8.2f} ms   per unit (budget 160 ms)")
    print(f"  written: {args.out / name}")
    return 0
