"""The streaming API the thinker and the performer call, with explicit per-session state.

One unit n, in order:
  1. observe(state, frames, audio)  encode obs_n (causal encoder, carried conv state), append its KV
  2. speak(state)                   k text slots by next-token prediction, one row each
  3. denoise(cache, n, noise)       the performer: solver steps of resp_n against the cache
  4. commit(state, z)               clean resp_n as context: append its KV; the unit is done
  5. decode(state, z)               causal VAE decode: 4 RGB frames + 160 ms of audio
A session starts with prefill(state, character): the character's tokens become the sinks.

`Streamer` holds the model and nothing of any session; `SessionState` holds one session's
KV cache, conv states and counters (Python ints), so one model serves many sessions.
A state of batch B is B sessions stepped together, one unit clock (`unit` is the batch's
tick): `prefill` starts all rows at tick 0; `join(state, slot, character)` starts a new session
in one row at the next tick while the others go on (Moshi's exec mask: a row without a call
computes and is ignored).
`Streamer(model, cuda_graphs=True)` runs each step's Transformer forward through CUDA graphs
once the cache is in steady state (unit_graphs.py); the outputs are those of the eager path.
`Streamer(model, compile=True)` runs the steady-state steps through torch.compile (compiled.py;
equal to eager to 1e-5, eager wherever a compile fails); `self.compiled.warm_up()` compiles up front.
Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from model.av_encoder import EncoderState
from model.compiled import CompiledSteps
from model.config import BOS
from model.duplex import DuplexModel, Latents, patchify
from model.flow import Rung, quality_ladder, solve
from model.kv_cache import KVCache
from model.layout import Kind, sink_meta, unit_meta
from model.unit_graphs import UnitGraphs
from model.vae import DecoderState


@dataclass
class Character:
    """Who the avatar is: prefilled at call start and kept as attention sinks."""
    name: str
    image: Tensor  # (3, H, W) in [-1, 1] at the preset's resolution
    voice: Tensor  # (voice_units * samples_per_unit,) in [-1, 1] at the model's audio rate
    persona: str


@dataclass
class SessionState:
    cache: KVCache
    encoder: EncoderState
    decoder: DecoderState
    last_text: Tensor  # (B,) int64: input of the next unit's first text slot
    unit: int = 0  # the unit being processed; advanced by commit


class Streamer:
    def __init__(self, model: DuplexModel, cuda_graphs: bool = False, compile: bool = False,
                 compile_cache_dir: str | None = None):
        if cuda_graphs and compile:
            raise ValueError("Streamer: pick one of cuda_graphs=True (GPU) and compile=True, not both")
        self.model = model
        self.graphs = UnitGraphs(model.transformer) if cuda_graphs else None
        self.compiled = CompiledSteps(model, compile_cache_dir) if compile else None
        # the calls each step makes: the eager modules, or their graphs / compiled twins
        self._forward = self.graphs or (self.compiled.transformer if compile else model.transformer)
        self._encoder = self.compiled.encoder if compile else model.encoder
        self._decode = self.compiled.decode if compile else model.vae.decode
        self.lay = model.layout
        lay, geo = self.lay, model.geometry
        self._sinks = sink_meta(lay, geo).pos
        self._obs = unit_meta(lay, geo, 0, Kind.OBS).pos
        self._text = [unit_meta(lay, geo, 0, Kind.TEXT, slot=j).pos for j in range(lay.text)]
        self._text_all = torch.cat(self._text)  # (k, 3): the k slots at once (the compiled path)
        self._resp = unit_meta(lay, geo, 0, Kind.RESP).pos

    @property
    def _device(self) -> torch.device:
        return self.model.text_head.weight.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.model.text_head.weight.dtype

    def _pos(self, base: Tensor, unit: int) -> Tensor:
        return (base + torch.tensor([4.0 * unit, 0.0, 0.0])).to(self._device)

    def _run(self, x: Tensor, t: Tensor | None, pos: Tensor, cache: KVCache, start: int,
             forward: Callable[..., Tensor] | None = None) -> Tensor:
        B, L, _ = x.shape
        t = torch.zeros(B, 1, device=x.device).expand(B, L) if t is None else t  # one time: clean
        span = cache.span(start, L)
        cache.mark(span)
        h = (forward or self._forward)(x, t, pos, cache=cache, span=span)
        cache.advance(start + L)
        return h

    def _unit_start(self, unit: int) -> int:
        return self.lay.sinks + unit * self.lay.unit

    def _resp_start(self, unit: int) -> int:
        return self._unit_start(unit) + self.lay.obs + self.lay.text

    # -- state ----------------------------------------------------------------------------
    def new_cache(self, batch: int = 1) -> KVCache:
        c = self.model.cfg.transformer
        return KVCache.empty(self.lay, c.n_layers, c.n_kv_heads, c.head_dim, batch,
                             self._device, self._dtype)

    def new_state(self, batch: int = 1, cache: KVCache | None = None) -> SessionState:
        """A fresh session; `cache`, an earlier session's, is reset and reused (its CUDA graphs
        stay valid: they are bound to the cache's tensors)."""
        dev, dt = self._device, self._dtype
        if cache is not None:
            cache.reset()
        return SessionState(cache=self.new_cache(batch) if cache is None else cache,
                            encoder=self.model.encoder.init_state(batch, dev, dt),
                            decoder=self.model.vae.init_decode_state(batch, dev, dt),
                            last_text=torch.full((batch,), BOS, dtype=torch.long, device=dev))

    def warm_up_graphs(self, cache: KVCache, media: bool = True) -> None:
        """Capture the CUDA graphs of every steady-state step on `cache` now (a worker's start,
        the cache its sessions reuse); media=False: the resp chunk only (a performer)."""
        lay, n = self.lay, self.lay.window_units  # unit W: its chunks see the whole ring
        chunks = [(self._resp_start(n), lay.resp)]
        if media:
            chunks += [(self._unit_start(n), lay.obs), (self._unit_start(n) + lay.obs, 1)]
        assert self.graphs is not None, "warm_up_graphs needs Streamer(cuda_graphs=True)"
        self.graphs.warm_up(cache, chunks)

    def sample_noise(self, batch: int, generator: torch.Generator | None = None) -> Latents:
        lay = self.lay
        shapes = ((batch, lay.resp_video, lay.video_token_dim), (batch, lay.resp_audio, lay.audio_token_dim))
        return Latents(*(torch.randn(s, generator=generator, device=self._device, dtype=self._dtype)
                         for s in shapes))

    # -- the steps ------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(self, state: SessionState, character: Character) -> None:
        """Every row of a fresh state starts a session with `character` at tick 0."""
        self._prefill(state.cache, character, state.last_text.shape[0], state.unit)

    @torch.no_grad()
    def join(self, state: SessionState, slot: int, character: Character) -> None:
        """A new session in batch row `slot`, from the batch's next unit `state.unit` on; the
        other rows go on. Its rows, conv states and text are cleared and its character is
        prefilled with the sinks' times moved to that unit: RoPE sees only differences of
        positions, so the session is computed as one started alone (tests/model/test_batch.py)."""
        state.cache.reset_slot(slot)
        state.encoder.reset(slot)
        state.decoder.reset(slot)
        state.last_text[slot] = BOS
        self._prefill(state.cache.slot(slot), character, 1, state.unit)
        state.cache.advance(self.lay.sinks)

    def _prefill(self, cache: KVCache, character: Character, B: int, unit: int) -> None:
        m, cfg = self.model, self.model.cfg
        want_img = (3, cfg.video.height, cfg.video.width)
        want_voice = cfg.character.voice_units * cfg.audio.samples_per_unit
        if tuple(character.image.shape) != want_img or character.voice.shape != (want_voice,):
            raise ValueError(f"character {character.name!r}: image {tuple(character.image.shape)} "
                             f"and voice {tuple(character.voice.shape)} must be {want_img} and "
                             f"({want_voice},) for preset {cfg.name!r}")
        image = character.image.to(self._device, self._dtype).expand(B, *want_img)
        voice = character.voice.to(self._device, self._dtype).expand(B, want_voice)
        x = m.embed_sinks(patchify(m.vae.encode_image(image), cfg.video.patch),
                          m.vae.encode_audio(voice), m.persona_ids(character.persona, B))
        self._run(x, None, self._pos(self._sinks, unit), cache, 0)

    @torch.no_grad()
    def observe(self, state: SessionState, frames: Tensor, audio: Tensor) -> None:
        """frames (B, 4, 3, H, W) and audio (B, samples_per_unit) of unit `state.unit`, in [-1, 1]."""
        n, start = state.unit, self._unit_start(state.unit)
        if state.cache.length != start:
            raise RuntimeError(f"observe(unit {n}) needs the prefill and units < {n} committed: "
                               f"cache holds {state.cache.length} rows, expected {start}")
        video, aud = self._encoder(frames, audio, state.encoder)
        self._run(self.model.embed_obs(video[:, 0], aud), None, self._pos(self._obs, n), state.cache, start)

    @torch.no_grad()
    def speak(self, state: SessionState, forced: Tensor | None = None, temperature: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """k text slots of unit `state.unit`: tokens (B, k) and their logits (B, k, V).
        `forced` (B, k) feeds given tokens instead of sampled ones (typed text, tests); an entry
        < 0 leaves that slot of that row to the model."""
        n, lay = state.unit, self.lay
        if self.compiled is not None and temperature == 0:  # all k slots as one graph, once steady
            out = self.compiled.text(state.last_text, forced, self._pos(self._text_all, n), state.cache,
                                     self._unit_start(n) + lay.obs)
            if out is not None:
                state.last_text = out[0][:, -1]
                return out
        # slot by slot: the window filling, or sampling (eager even when compiled: no graph of its own)
        forward = self.model.transformer if self.compiled is not None else None
        prev, tokens, logits = state.last_text, [], []
        for j in range(lay.text):
            start = self._unit_start(n) + lay.obs + j
            h = self._run(self.model.embed_text(prev[:, None]), None, self._pos(self._text[j], n),
                          state.cache, start, forward)
            lg = self.model.text_logits(h[:, 0]).float()
            if temperature > 0:
                prev = torch.multinomial(torch.softmax(lg / temperature, -1), 1, generator=generator)[:, 0]
            else:
                prev = lg.argmax(-1)
            if forced is not None:
                prev = torch.where(forced[:, j] >= 0, forced[:, j], prev)
            tokens.append(prev)
            logits.append(lg)
        state.last_text = prev
        return torch.stack(tokens, 1), torch.stack(logits, 1)

    @torch.no_grad()
    def velocity(self, cache: KVCache, unit: int, x: Latents, t: Tensor) -> Latents:
        """One solver evaluation: noisy resp of `unit` at times t (B,) against the cache."""
        B = x.video.shape[0]
        tt = t.to(self._device, torch.float32)[:, None].expand(B, self.lay.resp)
        if self.compiled is not None:  # embedding, forward and head as one graph, once steady
            v = self.compiled.resp(x, tt[:, :1], self._pos(self._resp, unit), cache, self._resp_start(unit))
            if v is not None:
                return v
        h = self._run(self.model.embed_resp(x), tt, self._pos(self._resp, unit), cache,
                      self._resp_start(unit))
        return self.model.velocity(h)

    @property
    def ladder(self) -> tuple[Rung, ...]:
        """The quality ladder of this model: the preset's solver first, down to one step."""
        f = self.model.cfg.flow
        return quality_ladder(f.steps, f.solver)

    def denoise(self, cache: KVCache, unit: int, noise: Latents, rung: Rung | None = None) -> Latents:
        """Flow-matching solve of resp_`unit` from `noise`; the performer's whole job. `rung`
        (a rung of `ladder`) trades quality for time; None is the top rung."""
        f = self.model.cfg.flow
        r = rung if rung is not None else self.ladder[0]
        z = solve(lambda x, t: self.velocity(cache, unit, Latents(*x), t), tuple(noise),
                  r.steps, f.shift, r.solver)
        return Latents(*z)

    @torch.no_grad()
    def commit(self, state: SessionState, z: Latents) -> None:
        """Clean resp of `state.unit` into the cache as context; the unit is complete."""
        n = state.unit
        if state.cache.length < self._resp_start(n):
            raise RuntimeError(f"commit(unit {n}) before its obs and text: cache holds "
                               f"{state.cache.length} rows, expected >= {self._resp_start(n)}")
        pos, start = self._pos(self._resp, n), self._resp_start(n)
        clean = torch.zeros(z.video.shape[0], 1, device=self._device)
        if self.compiled is None or self.compiled.resp(z, clean, pos, state.cache, start) is None:
            self._run(self.model.embed_resp(z), None, pos, state.cache, start)  # (the velocity graph's, unused)
        state.unit += 1

    @torch.no_grad()
    def decode(self, state: SessionState, z: Latents) -> tuple[Tensor, Tensor]:
        """Latents of one unit -> frames (B, 4, 3, H, W) and audio (B, samples_per_unit) in [-1, 1]."""
        video, audio = self.model.tokens_to_latents(z)
        return self._decode(video[:, None], audio, state.decoder)
