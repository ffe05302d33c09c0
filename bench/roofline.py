"""Roofline estimates of the serving stages: FLOPs and bytes moved per unit, against the
device's peak FLOP/s and memory bandwidth (given, or measured here on one thread / one GPU).

FLOPs: torch's FlopCounterMode over the real calls of one steady-state unit (the KV window
full), so the count follows the model as it is, not a formula that can drift from it.
Bytes: every aten op's tensor inputs plus outputs (views excluded): the traffic of an unfused
execution in which nothing stays in cache between ops. An upper bound for a fused kernel and
the right order of magnitude for eager PyTorch, which is what runs here.
Roofline time = max(FLOPs / peak FLOP/s, bytes / peak bandwidth); a stage's measured time
over its roofline time says how far it is from the hardware limit.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from model.media import frames_to_model
from model.streaming import Character, Streamer
from server.runtime.performer import unit_noise
from server.runtime.synthetic import synthetic_unit


class ByteCounter(TorchDispatchMode):
    """Sums the bytes of each non-view aten op's tensor arguments and results."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            for t in tree_flatten((args, kwargs, out))[0]:
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


@dataclass
class StageCost:
    flops: int
    bytes: int

    def roofline_ms(self, peak_flops: float, peak_bw: float) -> float:
        return 1e3 * max(self.flops / peak_flops, self.bytes / peak_bw)


def _count(fn: Callable[[], Any]) -> tuple[Any, StageCost]:
    flops, nbytes = FlopCounterMode(display=False), ByteCounter()
    with flops, nbytes:
        out = fn()
    return out, StageCost(flops.get_total_flops(), nbytes.bytes)


def stage_costs(streamer: Streamer, character: Character, seed: int = 0) -> dict[str, StageCost]:
    """Costs of one unit once the KV window is full: encode, language, solve, kv_update, decode."""
    s, cfg = streamer, streamer.model.cfg
    dev = s.model.text_head.weight.device
    st = s.new_state()
    s.prefill(st, character)

    def media(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, audio = synthetic_unit(cfg, 0, n)
        return frames_to_model(torch.from_numpy(frames).to(dev)), torch.from_numpy(audio).to(dev)

    n = cfg.window_units  # units 0 .. W-1 fill the window; unit W is counted
    for u in range(n):
        s.observe(st, *media(u))
        s.speak(st)
        z = s.denoise(st.cache, u, unit_noise(s, seed, u))
        s.commit(st, z)
        s.decode(st, z)
    costs: dict[str, StageCost] = {}
    _, costs["encode"] = _count(lambda: s.observe(st, *media(n)))
    _, costs["language"] = _count(lambda: s.speak(st))
    z, costs["solve"] = _count(lambda: s.denoise(st.cache, n, unit_noise(s, seed, n)))
    _, costs["kv_update"] = _count(lambda: s.commit(st, z))
    _, costs["decode"] = _count(lambda: s.decode(st, z))
    return costs


def measure_peaks(device: torch.device, seconds: float = 0.5) -> tuple[float, float]:
    """(FLOP/s of an fp32 matmul, bytes/s of a large copy) on `device`, at the current threads."""
    def rate(fn: Callable[[], None], work: float) -> float:
        fn()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            reps += 1
        sync()
        return reps * work / (time.perf_counter() - t0)

    n = 1024 if device.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    flops = rate(lambda: torch.mm(a, b), 2 * n ** 3)
    src = torch.empty(64 * 2 ** 20 // 4 if device.type == "cpu" else 2 ** 28, device=device)
    dst = torch.empty_like(src)
    bw = rate(lambda: dst.copy_(src), 2 * src.nbytes)  # read + write
    return flops, bw


def roofline_table(costs: dict[str, StageCost], measured_ms: dict[str, float], peak_flops: float,
                   peak_bw: float) -> dict[str, dict[str, Any]]:
    """stage -> flops, bytes, roofline_ms, measured_ms (p50), pct_of_roofline."""
    out = {}
    for name, c in costs.items():
        roof = c.roofline_ms(peak_flops, peak_bw)
        meas = measured_ms.get(name, float("nan"))
        out[name] = {**asdict(c), "roofline_ms": roof, "measured_p50_ms": meas,
                     "pct_of_roofline": 100.0 * roof / meas if meas > 0 else float("nan"),
                     "bound": "compute" if c.flops / peak_flops >= c.bytes / peak_bw else "memory"}
    return out
