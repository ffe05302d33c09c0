"""CUDA graphs of the per-unit chunk forwards: each step of a unit (the thinker's obs chunk,
its text slots and its commit of resp, the performer's solver steps) is one Transformer forward
of a chunk against the KV cache, and in steady state each is one graph replay.

Why shapes are static: a preset fixes every chunk's size (obs, 1 a text slot, resp), and from
unit W on every chunk sees the whole cache (kv_cache.py). A chunk's forward then differs from
unit to unit only in values: x, t, pos and the physical rows it writes (a device tensor,
`CacheSpan.rows`). So one graph per chunk shape serves every later unit: the step copies its
inputs into the graph's static buffers, replays it, and clones the output out.

A worker captures them before it serves (`warm_up`, on the cache its sessions will use, both
attention variants of a batch): a call that joins a busy pair then waits for no capture.
What runs eager (the very same forward, nothing captured):
  - everything when the model is not on a CUDA device;
  - the prefill and the units before W (bar the resp of unit W - 1), while the visible prefix
    still grows every unit;
  - a shape whose capture failed: logged once with the error, eager from then on;
  - around each forward: embeddings, heads, the solver's update, sampling (a few kernels).

Graphs bake in the cache's addresses, so they serve the one cache they were captured on (each
worker keeps one cache for its lifetime and resets it per session: Streamer.new_state(cache=))
and are dropped and captured again when a step runs on another cache. This is a compilation cache, not
session state: outputs never depend on it. Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from model.kv_cache import CacheSpan, KVCache
from model.transformer import Transformer

log = logging.getLogger(__name__)

WARMUP_RUNS = 2  # eager runs before a capture: lazy CUDA init, cuBLAS workspaces, Triton autotuning


class CudaGraph:
    """One captured forward: `run` reads static inputs and returns its output."""

    @staticmethod
    def supports(device: torch.device) -> bool:
        return device.type == "cuda"

    @staticmethod
    def new_pool() -> tuple[int, int]:
        """A memory pool the graphs of one cache share."""
        return torch.cuda.graph_pool_handle()

    def __init__(self, run: Callable[[], Tensor], pool: tuple[int, int]):
        # 1. warm up on a side stream, as capture requires; each run writes the chunk's KV rows
        #    with the values the real step writes, so running it again changes nothing
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                run()
        torch.cuda.current_stream().wait_stream(side)
        # 2. capture into the pool shared by this cache's graphs (they never run concurrently);
        #    thread-local: a worker's transport thread may use CUDA meanwhile on its own stream
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.out = run()

    def replay(self) -> Tensor:
        """The output lives in the shared pool: valid until another graph of the pool replays."""
        self.graph.replay()
        return self.out


@dataclass
class _Static:
    """A graph's inputs at fixed addresses, and the graph (None: its capture failed)."""
    x: Tensor  # (B, L, D)
    t: Tensor  # (B, L)
    pos: Tensor  # (L, 3)
    span: CacheSpan  # rows (L,); visible = the cache's capacity
    graph: CudaGraph | None = None

    @classmethod
    def like(cls, x: Tensor, t: Tensor, pos: Tensor, span: CacheSpan) -> "_Static":
        def new(a: Tensor) -> Tensor:
            return torch.empty_like(a, memory_format=torch.contiguous_format)
        return cls(new(x), new(t), new(pos), CacheSpan(rows=new(span.rows), visible=span.visible))

    def load(self, x: Tensor, t: Tensor, pos: Tensor, span: CacheSpan) -> None:
        self.x.copy_(x)
        self.t.copy_(t)
        self.pos.copy_(pos)
        self.span.rows.copy_(span.rows)


class UnitGraphs:
    """Called as the Transformer is on the serving path: `(x, t, pos, cache=, span=) -> h`."""

    def __init__(self, transformer: Transformer):
        self.transformer = transformer
        self.captures = 0  # graphs captured (failed captures not counted)
        self.replays = 0  # forwards served by a replay
        self._graphs: dict[tuple, _Static] = {}  # (backend, masked, B, L, D) -> graph
        self._cache: weakref.ref[KVCache] | None = None  # the cache the graphs write into
        self._pool: tuple[int, int] | None = None
        device = next(transformer.parameters()).device
        if not CudaGraph.supports(device):
            log.info("CUDA graphs need a CUDA device; the model is on %s: every step runs eager", device)

    def __call__(self, x: Tensor, t: Tensor, pos: Tensor, *, cache: KVCache, span: CacheSpan) -> Tensor:
        if not CudaGraph.supports(x.device) or span.visible != cache.capacity:
            return self.transformer(x, t, pos, cache=cache, span=span)
        self._bind(cache)
        key = (self.transformer.backend, cache.masked, *x.shape)  # masked: attention reads `written`
        static = self._graphs.get(key)
        if static is None:
            static = self._graphs[key] = _Static.like(x, t, pos, span)
            static.load(x, t, pos, span)
            static.graph = self._capture(static, cache, key)
        if static.graph is None:
            return self.transformer(x, t, pos, cache=cache, span=span)
        static.load(x, t, pos, span)
        self.replays += 1
        return static.graph.replay().clone()

    def warm_up(self, cache: KVCache, chunks: Sequence[tuple[int, int]]) -> None:
        """Capture now, on `cache` (graphs are bound to it: the one its sessions will use), the
        graph of each steady-state chunk (start, rows); a batch in both attention variants (a
        slot that joins on its own makes it masked). The cache is reset after."""
        p = next(self.transformer.parameters())
        if not CudaGraph.supports(p.device):
            return
        B, D = cache.k.shape[1], self.transformer.cfg.dim
        for masked in (False, True) if B > 1 else (False,):
            cache.masked = masked
            for start, L in chunks:
                span = cache.span(start, L)
                cache.mark(span)
                self(torch.zeros(B, L, D, device=p.device, dtype=p.dtype), torch.zeros(B, L, device=p.device),
                     torch.zeros(L, 3, device=p.device), cache=cache, span=span)
        cache.reset()

    def _bind(self, cache: KVCache) -> None:
        """Graphs of another cache write into its memory: drop them when the cache changes."""
        if self._cache is not None and self._cache() is cache:
            return
        self._graphs.clear()
        self._cache = weakref.ref(cache)
        self._pool = CudaGraph.new_pool()

    def _capture(self, static: _Static, cache: KVCache, key: tuple) -> CudaGraph | None:
        def run() -> Tensor:
            return self.transformer(static.x, static.t, static.pos, cache=cache, span=static.span)
        try:
            graph = CudaGraph(run, self._pool)
        except Exception:  # any failure to capture falls back to eager, loudly, once per shape
            log.warning("CUDA graph capture failed for chunk (backend, masked, B, L, D) = %s; this shape "
                        "runs eager from now on", key, exc_info=True)
            return None
        self.captures += 1
        return graph
