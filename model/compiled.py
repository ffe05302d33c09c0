"""torch.compile of the per-unit steps (inductor; its C++ backend on CPU): the fast path of the
steady state, beside the eager path it must equal (to 1e-5 in fp32, tests/model/test_compiled.py).

What is compiled, and why only that:
  - the Transformer forward of each chunk once the KV cache is in steady state (every chunk
    sees the whole capacity, kv_cache.py): its shapes are then fixed by the preset, so one
    graph per chunk length serves every later unit (the obs chunk's; the text slots and the
    resp chunk run as whole steps, below). Before the window is full the visible
    prefix grows every unit; those units run eager rather than recompile each unit.
    A chunk whose time is one value (clean context, or a solver step: t expanded over the
    chunk) computes its timestep modulation once instead of per token. The graph only reads
    the KV cache: attention takes the chunk's own k, v beside it (attention.attend_beside),
    and the rows are written after the graph, one index_copy_ for all layers; a graph that
    wrote into the cache in place would copy the whole cache per layer (inductor's
    functionalization of a mutated view of an input).
  - whole steps where a step is more than its forward: the k text slots of a unit (embedding,
    forward, logits and greedy or forced argmax of each slot; slot j attends to slots < j held
    beside the cache, `prior` in transformer.py) as one graph, where eager makes k forwards
    and ~40 small ops around them; and a resp chunk (embedding, forward, velocity head) as
    one graph serving every solver step of every rung (t is an input) and commit (t = 0, its
    head unused). The solver's update and sampled text slots stay eager.
  - the user-side encoder (video + audio) and the VAE's audio decoder: fixed shapes every
    unit, their conv state buffers updated in place inside the graph. The VAE's video decoder
    stays eager: compiled it measured no faster on CPU (bench model-step --compare).
Everything else (the obs embedding, the solver's update, sampling) runs eager.

A compile that fails (no C++ compiler, an unsupported op, a torch that cannot) falls back to
the eager call it replaces, logged once with the error; outputs never depend on which ran.
Compiled artefacts are cached between processes by inductor's FX graph cache, in
`cache_dir` (TORCHINDUCTOR_CACHE_DIR when set, else ~/.cache/duplex/inductor): the first
compile of a preset takes about two minutes on 2 busy cores (`cpu`; the text slots' graph,
k forwards unrolled, is most of it), a warm one 9-25 s (bench model-step --compare; the
graphs are not frozen: see OPTIONS), so a server calls `warm_up` at start-up
(it compiles on a scratch cache, never a session's).
This is a compilation cache, not session state. Pure PyTorch: no processes, no sockets, no
clocks.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from model.config import LATENTS_PER_UNIT
from model.duplex import DuplexModel, Latents
from model.kv_cache import CacheSpan, KVCache
from model.vae import DecoderState, check_same_span

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "duplex" / "inductor"
RECOMPILE_LIMIT = 16  # graphs per compiled function: 2-3 chunk shapes per model, a few models
# inductor options: a C++ wrapper around the kernels instead of Python (the per-call overhead
# is what a 1-token text slot mostly costs).
OPTIONS = {"cpp_wrapper": True}
# Not frozen: inductor's freezing (weights as constants, the linears prepacked for MKL's packed
# sgemm) measured no faster end to end on quiet cores (2026-11-29, cpu preset, 1 thread), and
# frozen graphs skip inductor's FX graph cache (packed weights do not pickle), so every start
# would lower them again: 80+ s instead of 9-25 s. Unfrozen graphs take the weights as inputs:
# a model loaded from a checkpoint computes with its own weights.


def use_cache_dir(cache_dir: Path | str | None) -> Path:
    """Point inductor's on-disk caches at `cache_dir` (None: TORCHINDUCTOR_CACHE_DIR if set,
    else DEFAULT_CACHE_DIR). Inductor reads the variable at each compile, so this takes
    effect for compiles that follow; it changes nothing else."""
    if cache_dir is None:
        cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR", DEFAULT_CACHE_DIR)
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def canonical(x: Tensor) -> Tensor:
    """`x` with row-major strides, size-1 dimensions included: a graph's guards check every
    stride, and a permuted frame, an expanded time or a sliced token would otherwise compile a
    second graph in the middle of a call (`.contiguous()` keeps odd strides of size-1 dims)."""
    want, step = [], 1
    for size in reversed(x.shape):
        want.append(step)
        step *= size
    if x.stride() == tuple(reversed(want)):
        return x
    return x.clone(memory_format=torch.contiguous_format)


class Compiled:
    """One function under torch.compile with an eager twin: `__call__` runs the compiled one,
    or the eager one once compiling or running the compiled one has failed (logged once)."""

    def __init__(self, name: str, eager: Callable[..., Any]):
        self.name = name
        self.eager = eager
        self.failed = False
        self.calls = 0  # calls served by the compiled function
        self._compiled = torch.compile(eager, dynamic=False, fullgraph=True, options=OPTIONS)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed:
            return self.eager(*args, **kwargs)
        args = tuple(canonical(a) if isinstance(a, Tensor) else a for a in args)
        dyn = torch._dynamo.config
        limit = dyn.recompile_limit
        try:
            dyn.recompile_limit = RECOMPILE_LIMIT  # by hand: config.patch costs ~30 us a call
            try:
                out = self._compiled(*args, **kwargs)
            finally:
                dyn.recompile_limit = limit
        except Exception:  # any failure to compile or run compiled: eager from now on, loudly, once
            log.warning("torch.compile of %s failed; it runs eager from now on", self.name,
                        exc_info=True)
            self.failed = True
            return self.eager(*args, **kwargs)
        self.calls += 1
        return out


class CompiledSteps:
    """The compiled twins of a model's per-unit calls, with the eager ones' signatures:
    `transformer(x, t, pos, cache=, span=)`, `encoder(frames, audio, state)`,
    `decode(video, audio, state)`."""

    def __init__(self, model: DuplexModel, cache_dir: Path | str | None = None):
        self.model = model
        self.cache_dir = use_cache_dir(cache_dir)
        tr = model.transformer

        def chunk(x: Tensor, t: Tensor, pos: Tensor, cache: KVCache,
                  span: CacheSpan) -> tuple[Tensor, Tensor, Tensor]:
            held: list[tuple[Tensor, Tensor]] = []  # the graph only reads the cache (see transformer)
            h = tr(x, t, pos, cache=cache, span=span, held=held)
            return h, torch.stack([k for k, _ in held]), torch.stack([v for _, v in held])

        def text(prev: Tensor, forced: Tensor, use_forced: Tensor, pos: Tensor, cache: KVCache,
                 span: CacheSpan) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            held: list[tuple[Tensor, Tensor]] = []  # slots 0..j-1's rows, per layer, beside the cache
            t = torch.zeros(prev.shape[0], 1, device=prev.device)
            tokens, logits = [], []
            for j in range(pos.shape[0]):
                mine: list[tuple[Tensor, Tensor]] = []
                h = tr(model.embed_text(prev[:, None]), t, pos[j:j + 1], cache=cache,
                       span=CacheSpan(span.rows[:j + 1], span.visible), held=mine, prior=held or None)
                lg = model.text_logits(h[:, 0]).float()
                prev = torch.where(use_forced[:, j], forced[:, j], lg.argmax(-1))
                held = mine if not held else [(torch.cat([pk, k], 2), torch.cat([pv, v], 2))
                                              for (pk, pv), (k, v) in zip(held, mine)]
                tokens.append(prev)
                logits.append(lg)
            return (torch.stack(tokens, 1), torch.stack(logits, 1),
                    torch.stack([k for k, _ in held]), torch.stack([v for _, v in held]))

        def resp(video: Tensor, audio: Tensor, t: Tensor, pos: Tensor, cache: KVCache,
                 span: CacheSpan) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            h, k, v = chunk(model.embed_resp(Latents(video, audio)), t, pos, cache, span)
            vel = model.velocity(h)
            return vel.video, vel.audio, k, v

        self._chunk = Compiled("the Transformer chunk forward", chunk)
        self._text = Compiled("the text slots", text)
        self._resp = Compiled("the resp chunk", resp)
        self.encoder = Compiled("the AV encoder", model.encoder)
        self._audio_decoder = Compiled("the VAE audio decoder", model.vae.audio_decoder)

    def transformer(self, x: Tensor, t: Tensor, pos: Tensor, *, cache: KVCache, span: CacheSpan) -> Tensor:
        """Called as the Transformer is on the serving path: `(x, t, pos, cache=, span=) -> h`."""
        if t.shape[1] > 1 and t.stride(1) == 0:  # one time for the chunk: modulation once
            t = t[:, :1]
        if span.visible != cache.capacity:  # the window still filling: shapes change each unit
            return self.model.transformer(x, t, pos, cache=cache, span=span)
        h, k, v = self._chunk(x, t, pos, cache, span)  # k, v (layers, B, Hkv, L, d)
        cache.k.index_copy_(3, span.rows, k)  # the chunk's rows into the cache, all layers at once
        cache.v.index_copy_(3, span.rows, v)
        return h

    def text(self, prev: Tensor, forced: Tensor | None, pos: Tensor, cache: KVCache,
             start: int) -> tuple[Tensor, Tensor] | None:
        """The k text slots of a unit, greedy or `forced` (B, k; entries < 0: greedy), as one graph: embedding,
        forward, logits and argmax of each slot, slot j attending to slots < j beside the
        cache. prev (B,) the first slot's input; pos (k, 3); `start` the first slot's logical
        row. Writes the k rows and advances the cache. -> tokens (B, k), logits (B, k, V); None
        before the steady state (nothing done: the caller runs its slots eager)."""
        if start + 1 < cache.capacity:  # the first slot does not yet see the whole ring
            return None
        k = pos.shape[0]
        span = cache.span(start, k)
        forced = torch.full_like(prev[:, None].expand(-1, k), -1) if forced is None else forced
        use, forced = forced >= 0, forced.clamp(min=0)
        tokens, logits, kk, vv = self._text(prev, forced, use, pos, cache, span)
        cache.k.index_copy_(3, span.rows, kk)
        cache.v.index_copy_(3, span.rows, vv)
        cache.mark(span)  # after: slot j must not see slots > j as written by its session
        cache.advance(start + k)
        return tokens, logits

    def resp(self, z: Latents, t: Tensor, pos: Tensor, cache: KVCache, start: int) -> Latents | None:
        """A resp chunk as one graph: embedding, forward and velocity head. z noisy (or clean,
        t = 0) latents; t (B, 1) one time for the chunk; `start` its logical row. Writes its
        rows and advances the cache. -> the velocity; None before the steady state (nothing
        done: the caller runs it eager)."""
        L = self.model.layout.resp
        span = cache.span(start, L)
        if span.visible != cache.capacity:
            return None
        vv, va, k, v = self._resp(z.video, z.audio, t, pos, cache, span)
        cache.k.index_copy_(3, span.rows, k)
        cache.v.index_copy_(3, span.rows, v)
        cache.mark(span)
        cache.advance(start + L)
        return Latents(vv, va)

    def decode(self, video: Tensor, audio: Tensor, state: DecoderState) -> tuple[Tensor, Tensor]:
        """As AVVAE.decode with a state: video eager, audio compiled."""
        vae = self.model.vae
        check_same_span(video, 1, audio, LATENTS_PER_UNIT, "CompiledSteps.decode")
        return vae.decode_video(video, state.video), self._audio_decoder(audio, state.audio)

    @property
    def failed(self) -> list[str]:
        """Names of the functions that fell back to eager."""
        return [c.name for c in (self._chunk, self._text, self._resp, self.encoder, self._audio_decoder)
                if c.failed]

    @torch.no_grad()
    def warm_up(self, batch: int = 1, media: bool = True) -> None:
        """Compile every steady-state shape now, on a scratch cache and scratch states (a
        server's start-up), so that no session's unit waits for the compiler. media=False:
        the Transformer chunks only (a performer never encodes nor decodes)."""
        m, lay = self.model, self.model.layout
        cfg, p = m.cfg, next(m.parameters())
        D = cfg.transformer.dim
        c = cfg.transformer
        cache = KVCache.empty(lay, c.n_layers, c.n_kv_heads, c.head_dim, batch, p.device, p.dtype)
        start = lay.sinks + lay.window_units * lay.unit  # unit W: the first that sees the whole ring
        x = torch.zeros(batch, lay.obs, D, device=p.device, dtype=p.dtype)  # the obs chunk
        t = torch.zeros(batch, 1, device=p.device)
        prev = torch.zeros(batch, dtype=torch.long, device=p.device)  # the text slots (greedy and forced: one graph)
        z = Latents(torch.zeros(batch, lay.resp_video, lay.video_token_dim, device=p.device, dtype=p.dtype),
                    torch.zeros(batch, lay.resp_audio, lay.audio_token_dim, device=p.device, dtype=p.dtype))
        # a batch also runs masked once a slot has joined on its own (attention follows `written`)
        for masked in (False, True) if batch > 1 else (False,):
            cache.masked = masked
            self.transformer(x, t.expand(batch, lay.obs), torch.zeros(lay.obs, 3, device=p.device),
                             cache=cache, span=cache.span(start, lay.obs))
            self.text(prev, None, torch.zeros(lay.text, 3, device=p.device), cache, start + lay.obs)
            self.resp(z, t, torch.zeros(lay.resp, 3, device=p.device), cache, start + lay.obs + lay.text)
        if not media:
            return
        enc = m.encoder.init_state(batch, p.device, p.dtype)
        frames = torch.zeros(batch, 4, 3, cfg.video.height, cfg.video.width, device=p.device, dtype=p.dtype)
        self.encoder(frames, torch.zeros(batch, cfg.audio.samples_per_unit, device=p.device, dtype=p.dtype), enc)
        dec = m.vae.init_decode_state(batch, p.device, p.dtype)
        self._audio_decoder(torch.zeros(batch, lay.resp_audio, cfg.audio.vae_channels, device=p.device, dtype=p.dtype), dec.audio)
