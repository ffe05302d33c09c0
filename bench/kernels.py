"""`duplex bench kernels`: the serving attention (a chunk against the KV cache, no mask),
Triton split-KV kernel vs torch SDPA vs FlexAttention vs the eager reference, same shapes.

  duplex bench kernels [--presets base large] [--lq 64 256] [--contexts 2048 8192 32768 100000]
  duplex bench kernels --interpret-smoke --out /tmp/x   # CPU, one tiny shape: tests the bench

Formulas (per call, beside the numbers they produce):
  FLOPs = 4 B Hq Lq Lk d   (q k^T and p v, 2 FLOPs a multiply-add; softmax not counted)
  bytes = (q + k + v + o) x dtype size = B d (2 Hq Lq + 2 Hkv Lk) x size (each read or written once)
Roofline time = max(FLOPs / peak FLOP/s, bytes / peak bandwidth): the binding limit.
% of roofline = roofline time / measured time. Peaks come from flags (defaults: H100 SXM,
989 TFLOP/s dense bf16, 3.35 TB/s); the bandwidth of a large device copy is measured and
reported beside them. Timing: CUDA events, warm-up calls, then the median of --reps calls.
Head layouts are read from model.config (base, large); Lk counts the chunk itself.
JSON and PNG go to bench/results/<date>_<device>_kernels.{json,png}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from bench.record import RESULTS, result_stem, write_json
from model.config import preset

Attention = Callable[[Tensor, Tensor, Tensor], Tensor]


def flops_and_bytes(B: int, Hq: int, Hkv: int, Lq: int, Lk: int, d: int, itemsize: int) -> tuple[int, int]:
    return 4 * B * Hq * Lq * Lk * d, B * d * (2 * Hq * Lq + 2 * Hkv * Lk) * itemsize


def median_ms(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Median wall time of fn in ms: CUDA events on a GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int, reps: int = 10) -> float:
    """Bytes/s of a device-to-device copy (read + write counted), median of reps."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / (median_ms(lambda: dst.copy_(src), device, 2, reps) / 1e3)


def methods(device: torch.device) -> dict[str, Attention]:
    """The implementations compared; FlexAttention only on CUDA (compiled) and if importable."""
    import torch.nn.functional as F

    from kernels.attention_reference import attention_reference
    from kernels.chunk_attention import chunk_attention

    out: dict[str, Attention] = {
        "triton": chunk_attention,
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1]),
        "reference": attention_reference,
    }
    if device.type == "cuda":
        try:
            from torch.nn.attention.flex_attention import flex_attention
        except ImportError:
            return out
        flex = torch.compile(flex_attention)
        out["flex"] = lambda q, k, v: flex(q, k, v, enable_gqa=q.shape[1] != k.shape[1])
    return out


def run_shape(impls: dict[str, Attention], name: str, Hq: int, Hkv: int, d: int, Lq: int, Lk: int,
              dtype: torch.dtype, device: torch.device, peak_flops: float, peak_bw: float,
              warmup: int, reps: int) -> dict[str, Any]:
    B = 1
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(B, Hq, Lq, d, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, Lk, d, generator=g).to(device, dtype)
    v = torch.randn(B, Hkv, Lk, d, generator=g).to(device, dtype)
    flops, nbytes = flops_and_bytes(B, Hq, Hkv, Lq, Lk, d, q.element_size())
    roof_ms = 1e3 * max(flops / peak_flops, nbytes / peak_bw)
    row: dict[str, Any] = {
        "preset": name, "B": B, "Hq": Hq, "Hkv": Hkv, "d": d, "Lq": Lq, "Lk": Lk, "flops": flops,
        "bytes": nbytes, "bound": "compute" if flops / peak_flops >= nbytes / peak_bw else "memory",
        "roofline_ms": roof_ms, "methods": {}}
    want = None
    for method, fn in impls.items():
        try:
            out = fn(q, k, v)
            ms = median_ms(lambda: fn(q, k, v), device, warmup, reps)
        except torch.cuda.OutOfMemoryError:  # the eager reference at 100k keys, on a small GPU
            row["methods"][method] = {"error": "out of memory"}
            torch.cuda.empty_cache()
            continue
        want = out.float() if want is None else want  # the first method's output (triton)
        row["methods"][method] = {
            "ms": ms, "tflops": flops / ms / 1e9, "gbps": nbytes / ms / 1e6,
            "pct_of_roofline": 100.0 * roof_ms / ms,
            "max_abs_diff_vs_triton": float((out.float() - want).abs().max())}
    return row


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["preset"], r["Lq"]) for r in result["rows"]})
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.5, 4.5 * len(panels)), 4), squeeze=False)
    for ax, (name, Lq) in zip(axes[0], panels):
        rows = [r for r in result["rows"] if (r["preset"], r["Lq"]) == (name, Lq)]
        ctx = [r["Lk"] for r in rows]
        for method in rows[0]["methods"]:
            ax.plot(ctx, [r["methods"][method].get("ms", float("nan")) for r in rows], "o-", label=method)
        ax.plot(ctx, [r["roofline_ms"] for r in rows], "k--", lw=0.8, label="roofline")
        ax.set(xscale="log", yscale="log", xlabel="context Lk", ylabel="ms",
               title=f"{name}: Hq {rows[0]['Hq']}, Hkv {rows[0]['Hkv']}, d {rows[0]['d']}, Lq {Lq}")
        ax.legend(fontsize=7)
    fig.suptitle(f"chunk attention, {result['dtype']} / {result['device']} / {result['commit']} / "
                 f"{result['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict[str, Any]) -> None:
    print(f"kernels  device={result['device']}  dtype={result['dtype']}  commit={result['commit']}  "
          f"peaks {result['peak_tflops']:.0f} TFLOP/s, {result['peak_tbps']:.2f} TB/s "
          f"(copy measured {result['measured_copy_tbps']:.2f} TB/s)")
    print(f"{'preset':<7} {'Lq':>4} {'Lk':>7} {'bound':>7} {'roof ms':>8}  "
          + "  ".join(f"{m + ' ms':>11} {'%roof':>6}" for m in result["rows"][0]["methods"]))
    for r in result["rows"]:
        cells = []
        for m in r["methods"].values():
            cells.append(f"{m['ms']:11.3f} {m['pct_of_roofline']:5.1f}%" if "ms" in m else f"{m['error']:>18}")
        print(f"{r['preset']:<7} {r['Lq']:>4} {r['Lk']:>7} {r['bound']:>7} {r['roofline_ms']:8.3f}  "
              + "  ".join(cells))


def _heads(name: str) -> tuple[int, int, int]:
    """(Hq, Hkv, d) of a preset's transformer."""
    t = preset(name).transformer
    return t.n_heads, t.n_kv_heads, t.head_dim


def _enter_interpreter() -> bool:
    """Set TRITON_INTERPRET=1 for the smoke run; False if kernels/ was imported without it."""
    launch = sys.modules.get("kernels.launch")
    if launch is not None and not launch.INTERPRET:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="duplex bench kernels", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["base", "large"], help="head layouts (model.config)")
    p.add_argument("--lq", nargs="+", type=int, default=[64, 256], help="chunk lengths")
    p.add_argument("--contexts", nargs="+", type=int, default=[2048, 8192, 32768, 100_000],
                   help="keys in the cache, chunk included")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense FLOP/s, in TFLOP/s")
    p.add_argument("--peak-tbps", type=float, default=3.35, help="peak memory bandwidth, in TB/s")
    p.add_argument("--interpret-smoke", action="store_true",
                   help="CPU only: one tiny fp32 shape under the Triton interpreter (tests the bench)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and PNG")
    p.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    args = p.parse_args(argv)

    if args.interpret_smoke:
        if not _enter_interpreter():
            print("duplex bench kernels: --interpret-smoke needs TRITON_INTERPRET=1 before kernels/ is "
                  "imported; run it in a fresh process", file=sys.stderr)
            return 2
        device, dtype = torch.device("cpu"), torch.float32
        shapes = [("tiny", *_heads("tiny"), 7, 131)]
        args.warmup, args.reps = 0, 1
    elif not torch.cuda.is_available():
        print("duplex bench kernels: no CUDA device here. The kernel benchmark times GPU kernels; on "
              "CPU only `--interpret-smoke` runs (one tiny shape under the Triton interpreter, to test "
              "the bench itself).", file=sys.stderr)
        return 2
    else:
        device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
        shapes = [(name, *_heads(name), lq, lk) for name in args.presets for lq in args.lq
                  for lk in args.contexts]
    # Imported only now: kernels/ chooses compiler or interpreter when first imported.
    from bench.model_step import device_name, git_commit

    peak_flops, peak_bw = args.peak_tflops * 1e12, args.peak_tbps * 1e12
    measured_bw = copy_bandwidth(device, 2 ** 30 if device.type == "cuda" else 2 ** 24)
    impls = methods(device)
    rows = [run_shape(impls, name, hq, hkv, d, lq, lk, dtype, device, peak_flops, peak_bw, args.warmup,
                      args.reps) for name, hq, hkv, d, lq, lk in shapes]
    result = {
        "bench": "kernels", "kernel": "chunk attention (no mask)", "device": device_name(device),
        "device_type": device.type, "interpreted": args.interpret_smoke,
        "dtype": str(dtype).removeprefix("torch."), "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "flops_formula": "4 * B * Hq * Lq * Lk * d", "bytes_formula": "(q + k + v + o) * dtype size",
        "peak_tflops": args.peak_tflops, "peak_tbps": args.peak_tbps,
        "measured_copy_tbps": measured_bw / 1e12, "warmup": args.warmup, "reps": args.reps, "rows": rows}
    stem = result_stem(args.out, result["device"], "kernels")
    write_json(result, stem)
    plot(result, stem.with_suffix(".png"))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
        print(f"wrote {stem}.json and .png")
    return 0

