"""`duplex bench soak`: one long call to a real `duplex serve`, watched for leaks and drift.

  duplex bench soak --minutes 30 --preset cpu [--sample-s 5] [--out bench/results] [--json]
  duplex bench soak --minutes 1 --daemon-cpus 0 --tag one-core   # the daemon confined to core 0
  duplex bench soak --minutes 1 --serve-arg=--compile             # any flag of `duplex serve`

Runbook:
  1. start `duplex serve` as a child process on a free loopback port with the preset (its call
     limit raised past the soak) and wait for /readyz 200
  2. call it from an aiortc client (bench/call_client.py: a synthetic 320x240 camera at 30 fps,
     a 48 kHz tone) and keep the call up for --minutes, counted from the first media back; a
     progress bar shows how far, with the RSS, the KV rows and the recent signal-to-signal
  3. every --sample-s seconds: the VmRSS of the daemon and of every process below it (walked
     through /proc/<pid>/task/*/children), the KV rows in use (duplex_kv_cache_tokens), the
     sessions active; each unit's signal-to-signal (`model_ms` of its `latency` event) as it
     arrives on the data channel
  4. hang up, stop the daemon (SIGTERM) and summarise: per process RSS in the first and the
     last window (a minute, or a third of a shorter soak) and its growth in %, KV rows, s2s
     p50/p99 in the first and the last window and their change in %, the share of the clock's
     units whose output arrived, skipped units
  5. print a table; write bench/results/<date>_<device>_<preset>_soak.json and .png

Exit status 0 when the call lasted the whole time, 1 when it ended early or never started.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tqdm import tqdm

from bench.call_client import CallClient, rates
from bench.record import RESULTS, result_stem, write_json
from model.config import UNIT_SECONDS

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 60.0  # the first and the last minute are compared (a third of a shorter soak)


# -- the daemon -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(preset: str, port: int, max_call_s: float, log: Path, cpus: str | None = None,
                 serve_args: list[str] | None = None) -> subprocess.Popen:
    """`cpus`: confine the daemon and its workers to these cores (taskset -c)."""
    cmd = [*(["taskset", "-c", cpus] if cpus else []), sys.executable, "-m", "server.cli", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--preset", preset,
           "--max-call-s", f"{max_call_s:g}", *(serve_args or [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


async def wait_ready(http: aiohttp.ClientSession, proc: subprocess.Popen, url: str, log: Path,
                     timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"duplex serve exited with {proc.returncode} before it was ready; "
                               f"its log ({log}):\n{log.read_text()[-3000:]}")
        try:
            async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r:
                if r.status == 200:
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"duplex serve not ready within {timeout:g} s; its log ({log}):\n"
                       f"{log.read_text()[-3000:]}")


def stop_daemon(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# -- what is sampled --------------------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from the kernel's per-thread children lists."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue  # the thread or the process is gone
            found += kids
            todo += kids
    return found


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None  # gone, or a zombie (no VmRSS line)


def role_of(pid: int, daemon_pid: int, log_text: str) -> str:
    """'daemon', 'thinker', 'performer' (from the daemon's 'worker pair ready' lines), or what
    the command line says (multiprocessing's resource tracker)."""
    if pid == daemon_pid:
        return "daemon"
    m = re.search(rf"'(thinker|performer)': \({pid}, ", log_text)
    if m:
        return m.group(1)
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        cmd = ""
    return "resource_tracker" if "resource_tracker" in cmd else "child"


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


# -- the soak ---------------------------------------------------------------------------------
async def soak(preset: str, minutes: float, sample_s: float, log: Path, cpus: str | None = None,
               serve_args: list[str] | None = None) -> dict[str, Any]:
    duration = minutes * 60
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_daemon(preset, port, max_call_s=duration + 300, log=log, cpus=cpus, serve_args=serve_args)
    samples: list[dict[str, Any]] = []
    roles: dict[int, str] = {}
    client: CallClient | None = None
    t0 = end = time.monotonic()
    lasted, end_reason, build = False, "", ""
    events: list[tuple[float, dict[str, Any]]] = []
    media: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ready(http, proc, url, log, timeout=300)
            async with http.get(url + "/metrics") as r:
                build = (re.search(r"^duplex_build_info\{(.*)\} ", await r.text(), re.M) or ["", ""])[1]
            client = CallClient(url)
            await client.call(character=None)
            t0 = await client.wait_media(timeout=60)
            bar = tqdm(total=round(duration), unit="s", desc="soak", mininterval=1.0, disable=None)
            try:
                while (now := time.monotonic()) - t0 < duration:
                    ended = client.got.of("ended")
                    if ended or client.pc.connectionState in ("failed", "closed") or proc.poll() is not None:
                        end_reason = (ended[0]["reason"] if ended else
                                      f"daemon exited ({proc.returncode})" if proc.poll() is not None else
                                      f"connection {client.pc.connectionState}")
                        break
                    log_text = log.read_text(errors="replace")
                    rss = {}
                    for pid in [proc.pid, *descendants(proc.pid)]:
                        if (mb := rss_mb(pid)) is not None:
                            roles.setdefault(pid, role_of(pid, proc.pid, log_text))
                            rss[pid] = mb
                    async with http.get(url + "/metrics") as r:
                        text = await r.text()
                    samples.append({"t": round(now - t0, 2), "rss_mb": rss,
                                    "kv_rows": metric(text, "duplex_kv_cache_tokens"),
                                    "sessions_active": metric(text, "duplex_sessions_active"),
                                    "units_skipped": metric(text, "duplex_units_skipped_total")})
                    recent = [e["model_ms"] for t, e in client.got.events[-200:]
                              if e["type"] == "latency" and t > now - 10]
                    bar.n = min(round(now - t0), bar.total)
                    bar.set_postfix(rss_mb=round(sum(rss.values())), kv=samples[-1]["kv_rows"],
                                    s2s_p50=round(float(np.median(recent)), 1) if recent else None,
                                    refresh=False)
                    bar.refresh()
                    await asyncio.sleep(min(sample_s, max(0.0, t0 + duration - time.monotonic())))
                else:
                    lasted = True
                    bar.n = bar.total
            finally:
                bar.close()
            end = time.monotonic()
            events, media = list(client.got.events), rates(client.got, t0, end)
            await client.hangup()
            client = None
    finally:
        if client is not None:
            await client.close()
        rc = stop_daemon(proc)
    return {"t0": t0, "end": end, "lasted": lasted, "end_reason": end_reason, "samples": samples,
            "roles": roles, "daemon_exit": rc, "build": build, "events": events, "media": media}


def window_mean(samples: list[dict[str, Any]], pid: int, lo: float, hi: float) -> float | None:
    vals = [s["rss_mb"][pid] for s in samples if lo <= s["t"] <= hi and pid in s["rss_mb"]]
    return float(np.mean(vals)) if vals else None


def pct(first: float | None, last: float | None) -> float | None:
    return None if not first or last is None else round(100 * (last - first) / first, 2)


def quantiles(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
            "n": len(values)}


def summarise(run: dict[str, Any], minutes: float, sample_s: float) -> dict[str, Any]:
    t0, samples, events, media = run["t0"], run["samples"], run["events"], run["media"]
    duration = run["end"] - t0
    w = min(WINDOW_S, duration / 3)
    processes = {}
    for pid, role in sorted(run["roles"].items(), key=lambda kv: (kv[1] != "daemon", kv[0])):
        first, last = window_mean(samples, pid, 0, w), window_mean(samples, pid, duration - w, duration)
        seen = [s["t"] for s in samples if pid in s["rss_mb"]]
        processes[f"{role} {pid}"] = {
            "pid": pid, "role": role, "rss_first_mb": first and round(first, 2),
            "rss_last_mb": last and round(last, 2), "growth_pct": pct(first, last),
            "rss_max_mb": round(max(s["rss_mb"][pid] for s in samples if pid in s["rss_mb"]), 2),
            "seen_s": [min(seen), max(seen)]}
    total = [sum(s["rss_mb"].values()) for s in samples]
    ts = [s["t"] for s in samples]
    t_first = [x for t, x in zip(ts, total) if t <= w]
    t_last = [x for t, x in zip(ts, total) if t >= duration - w]
    units = [(t - t0, e) for t, e in events if e.get("type") == "latency" and t0 <= t <= run["end"]]
    first_ms = [e["model_ms"] for t, e in units if t <= w]
    last_ms = [e["model_ms"] for t, e in units if t >= duration - w]
    q_first, q_last = quantiles(first_ms), quantiles(last_ms)
    expected = duration / UNIT_SECONDS
    kv = [s["kv_rows"] for s in samples]
    return {
        "minutes": minutes, "sample_s": sample_s, "window_s": round(w, 2),
        "call": {"lasted": run["lasted"], "duration_s": round(duration, 2), "end_reason": run["end_reason"],
                 "daemon_exit": run["daemon_exit"]},
        "processes": processes,
        "rss_total_mb": {"first": round(float(np.mean(t_first)), 2) if t_first else None,
                         "last": round(float(np.mean(t_last)), 2) if t_last else None,
                         "growth_pct": pct(np.mean(t_first) if t_first else None,
                                           np.mean(t_last) if t_last else None)},
        "kv_rows": {"first": kv[0] if kv else None, "last": kv[-1] if kv else None,
                    "min": min(kv, default=None), "max": max(kv, default=None)},
        "s2s_ms": {"first": q_first, "last": q_last,
                   "change_pct": {q: pct(q_first[q], q_last[q]) for q in ("p50", "p99")}},
        "units": {"delivered": len(units), "expected": round(expected, 1),
                  "delivered_share": round(len(units) / expected, 4) if expected else 0.0,
                  "skipped": int(samples[-1]["units_skipped"]) if samples else None,
                  "skipped_last_event": units[-1][1]["skipped"] if units else None},
        "media": {"video_fps": round(media.get("fps", 0.0), 2), "audio_samples_per_s": round(media.get("audio_rate", 0.0))},
        "samples": [{"t": s["t"], "kv_rows": s["kv_rows"], "sessions_active": s["sessions_active"],
                     "rss_mb": {f"{run['roles'][p]} {p}": round(v, 2) for p, v in s["rss_mb"].items()}}
                    for s in samples],
        "per_unit": {"t": [round(t, 3) for t, _ in units], "unit": [e["unit"] for _, e in units],
                     "model_ms": [e["model_ms"] for _, e in units], "steps": [e["steps"] for _, e in units]},
    }


def print_report(r: dict[str, Any]) -> None:
    c = r["call"]
    print(f"duplex bench soak: preset {r['preset']}, {r['minutes']:g} min, device {r['device']}, "
          f"commit {r['commit']}, {r['date']}")
    print(f"first/last window: {r['window_s']:g} s each; a sample every {r['sample_s']:g} s")
    print(f"{'process':<24} {'RSS first MB':>13} {'RSS last MB':>12} {'growth %':>9} {'max MB':>8}")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for name, p in r["processes"].items():
        print(f"{name:<24} {fmt(p['rss_first_mb'], '13.1f')} {fmt(p['rss_last_mb'], '12.1f')} "
              f"{fmt(p['growth_pct'], '9.2f')} {p['rss_max_mb']:8.1f}")
    t = r["rss_total_mb"]
    print(f"{'all':<24} {fmt(t['first'], '13.1f')} {fmt(t['last'], '12.1f')} {fmt(t['growth_pct'], '9.2f')}")
    kv = r["kv_rows"]
    print(f"KV rows in use        first {kv['first']}, last {kv['last']} (min {kv['min']}, max {kv['max']})")
    s = r["s2s_ms"]
    for q in ("p50", "p99"):
        print(f"signal-to-signal {q}  first {fmt(s['first'][q], '.1f')} ms, last {fmt(s['last'][q], '.1f')} ms, "
              f"change {fmt(s['change_pct'][q], '+.1f')} %")
    u = r["units"]
    print(f"units delivered       {100 * u['delivered_share']:.1f} % ({u['delivered']} of {u['expected']:g}); "
          f"skipped {u['skipped']}")
    print(f"media                 video {r['media']['video_fps']:.1f} fps, audio {r['media']['audio_samples_per_s']} "
          f"samples/s")
    print("call                  " + (f"lasted the whole {c['duration_s']:.0f} s" if c["lasted"] else
                                       f"ENDED EARLY after {c['duration_s']:.0f} s: {c['end_reason']}")
          + f"; daemon exit status {c['daemon_exit']}")


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for name in r["processes"]:
        pts = [(s["t"], s["rss_mb"][name]) for s in r["samples"] if name in s["rss_mb"]]
        ax1.plot([t / 60 for t, _ in pts], [v for _, v in pts], lw=0.9, label=name)
    ax1.set(xlabel="minutes into the call", ylabel="RSS (MB)", title="resident memory per process")
    ax1.legend(fontsize=7)
    u = r["per_unit"]
    ax2.plot([t / 60 for t in u["t"]], u["model_ms"], ".", ms=1.5, alpha=0.5, label="unit s2s (model_ms)")
    if len(u["model_ms"]) >= 25:
        roll = np.convolve(u["model_ms"], np.ones(25) / 25, mode="valid")
        ax2.plot([t / 60 for t in u["t"][24:]], roll, lw=1.0, color="k", label="mean of 25 units")
    ax2.axhline(UNIT_SECONDS * 1e3, color="k", ls="--", lw=0.8, label="unit (160 ms)")
    ax2.set(xlabel="minutes into the call", ylabel="ms", title="signal-to-signal over time")
    ax2.legend(fontsize=7)
    fig.suptitle(f"soak / {r['preset']} / {r['device']} / {r['commit']} / {r['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="duplex bench soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the call")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    ap.add_argument("--daemon-cpus", help="confine the daemon to these cores (taskset -c), e.g. 0")
    ap.add_argument("--serve-arg", action="append", default=[], help="a flag for duplex serve (repeat)")
    ap.add_argument("--tag", default="", help="added to the result's file name")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.sample_s <= 0:
        ap.error("--minutes and --sample-s must be positive")

    log = Path(tempfile.mkstemp(prefix="duplex-soak-", suffix=".log")[1])
    run = asyncio.run(soak(args.preset, args.minutes, args.sample_s, log, args.daemon_cpus, args.serve_arg))

    import torch  # only for the device's name

    from bench.model_step import device_name, git_commit
    transport = (re.search(r'transport="(\w+)"', run["build"]) or [None, "gloo"])[1]
    # what the daemon served: a checkpoint's own preset overrides --preset
    served = (re.search(r'preset="([\w-]+)"', run["build"]) or [None, args.preset])[1]
    device = torch.device("cpu" if transport == "gloo" else "cuda")
    r: dict[str, Any] = {"bench": "soak", "preset": served, "transport": transport,
                         "device": device_name(device), "commit": git_commit(),
                         "date": dt.datetime.now().isoformat(timespec="seconds"),
                         "client": "aiortc on loopback, synthetic 320x240 camera at 30 fps + 48 kHz tone",
                         "daemon_log": str(log), "daemon_cpus": args.daemon_cpus,
                         "serve_args": args.serve_arg,
                         **summarise(run, args.minutes, args.sample_s)}
    stem = result_stem(args.out, r["device"], served, "soak", args.tag)
    write_json(r, stem)
    plot(r, stem.with_suffix(".png"))
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print_report(r)
        print(f"wrote {stem}.json and .png (the daemon's log: {log})")
    return 0 if run["lasted"] else 1

