"""`duplex bench model-step`: time each streaming stage of one session in one process.

Stages per unit: observe (encode + obs KV), speak (k text slots), solver_step (one velocity
evaluation of the resp chunk), commit (clean resp KV), decode (VAE: 4 frames + 160 ms audio).
Roles: the thinker runs observe + speak + commit + decode, the performer runs `steps` solver
steps. With --threads 1 each role's sum is what one core would spend on it (the two roles run
on separate cores in the daemon). Warm-up units are not counted. JSON goes to bench/results/.
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
from model.duplex import Latents, build_model
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


def run(preset_name: str, device: torch.device, dtype: torch.dtype, units: int, warmup: int,
        backend: Backend = "sdpa", cuda_graphs: bool = False) -> dict:
    cfg = preset(preset_name)
    model = build_model(cfg, seed=0, device=device, dtype=dtype)
    model.transformer.backend = backend
    s = Streamer(model, cuda_graphs=cuda_graphs)
    st = s.new_state()
    g = torch.Generator(device="cpu").manual_seed(0)
    voice = cfg.character.voice_units * cfg.audio.samples_per_unit
    s.prefill(st, Character("bench", torch.rand(3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1,
                            torch.rand(voice, generator=g) * 2 - 1, "bench persona"))
    frames = (torch.rand(1, 4, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1).to(device, dtype)
    audio = (torch.rand(1, cfg.audio.samples_per_unit, generator=g) * 2 - 1).to(device, dtype)
    times: dict[str, list[float]] = {k: [] for k in STAGES}
    for n in range(warmup + units):
        _, t_obs = _timed(lambda: s.observe(st, frames, audio), device)
        _, t_speak = _timed(lambda: s.speak(st), device)
        noise = s.sample_noise(1, torch.Generator(device=device).manual_seed(n))
        t_step = torch.full((1,), 0.5, device=device)
        _, t_solver = _timed(lambda: s.velocity(st.cache, n, noise, t_step), device)
        z = Latents(*noise)
        _, t_commit = _timed(lambda: s.commit(st, z), device)
        _, t_decode = _timed(lambda: s.decode(st, z), device)
        if n >= warmup:
            for k, v in zip(STAGES, (t_obs, t_speak, t_solver, t_commit, t_decode)):
                times[k].append(v)
    arr = {k: np.array(v) for k, v in times.items()}
    thinker = arr["observe"] + arr["speak"] + arr["commit"] + arr["decode"]
    performer = arr["solver_step"] * cfg.flow.steps

    def stats(a: np.ndarray) -> dict[str, float]:
        return {"p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3)}

    return {
        "bench": "model-step", "preset": preset_name, "device": device_name(device),
        "device_type": device.type, "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(), "units": units, "warmup": warmup, "backend": backend,
        "cuda_graphs": cuda_graphs,
        "solver_steps": cfg.flow.steps, "resolution": [cfg.video.width, cfg.video.height],
        "tokens_per_unit": cfg.layout.unit, "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "stages_ms": {k: stats(a) for k, a in arr.items()},
        "per_unit_ms": {"thinker": stats(thinker), "performer": stats(performer)},
        "budget_ms": 160,
    }


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
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON record")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (
        preset(args.preset).layout.window_units + 5 if args.cuda_graphs else 5)
    result = run(args.preset, device, dtype, args.units, warmup, args.backend, args.cuda_graphs)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"{result['date'][:10]}_model-step_{args.preset}_{device.type}_{args.threads}t.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model-step  preset={args.preset}  device={result['device']}  dtype={result['dtype']}  "
          f"threads={result['threads']}  units={args.units}  commit={result['commit']}")
    for k, v in result["stages_ms"].items():
        print(f"  {k:<12} p50 {v['p50']:8.2f} ms   p99 {v['p99']:8.2f} ms")
    for role, v in result["per_unit_ms"].items():
        print(f"  {role:<12} p50 {v['p50']:8.2f} ms   p99 {v['p99']:8.2f} ms   per unit (budget 160 ms)")
    print(f"  written: {args.out / name}")
    return 0
