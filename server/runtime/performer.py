"""The performer's core: its copy of the pair's KV cache (a batch of session slots) and the
flow-matching solve.

  open(seed, rows)         the pair starts afresh: reset the cache, append every slot's sinks;
                           every slot's noise seed is `seed` until a join (the thinker's fresh join)
  join(slot, seed, tick, rows)  a session joins in `slot` from `tick`: that slot's sinks
  on_rows(rows, rung)      append resp_{t-1}, obs_t, text_t; solve resp_t from seeded noise at
                           that rung of the quality ladder: z_t

With `shared` (the thinker's own cache, on one GPU through CUDA IPC or in one machine's shared
memory) the performer steps on the thinker's rows themselves: each `rows` is then a `Span` the
thinker wrote, and only the performer's counters follow it. That is safe without a lock because
the pair alternates: the thinker writes (commit t-1, observe t, speak t) only while no solve
runs, and the performer solves t only between the thinker's span of t and its z_t going back.
The solver writes its noisy resp_t rows where commit(t) then writes the clean ones.

The noise of a session's unit n comes from a generator seeded by (its seed, n) (`unit_noise`),
so the single-process reference path draws exactly the same noise. The performer never decodes
and never runs the text head. A plain class: no transport, no pipe, no clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from model.duplex import Latents
from model.kv_cache import KVCache, KVRows, Span
from model.streaming import Streamer
from server.runtime.timings import StageTimer


def unit_noise(streamer: Streamer, seed: int, unit: int, batch: int = 1) -> Latents:
    """The noise resp_`unit` starts from, the same in every process: seeded by (seed, unit).
    The pair is hashed into 32 bits (SeedSequence): torch's CPU generator keeps only the low
    32 bits of a seed, so packing (seed, unit) into one int64 would repeat the noise."""
    if seed < 0 or unit < 0:
        raise ValueError(f"noise seed ({seed}) and unit ({unit}) must be >= 0")
    g = torch.Generator(device=streamer.model.text_head.weight.device)
    g.manual_seed(int(np.random.SeedSequence([seed, unit]).generate_state(1)[0]))
    return streamer.sample_noise(batch, g)


@dataclass
class Solved:
    unit: int
    z: Latents
    stages: dict[str, float]  # seconds per stage spent on this unit by the performer


class Performer:
    def __init__(self, streamer: Streamer, eval_delay_s: float = 0.0, slots: int = 1,
                 shared: KVCache | None = None):
        """`eval_delay_s`: test only, a sleep per solver evaluation, as a slower machine takes.
        `shared`: the thinker's cache (its tensors; this performer keeps counters of its own)."""
        self.s, self.eval_delay_s = streamer, eval_delay_s
        self.timer = StageTimer()
        self.cache = streamer.new_cache(slots) if shared is None else shared.shared()
        self.shared = shared is not None
        if streamer.graphs is not None:  # captured now: a call joining later waits for none
            streamer.warm_up_graphs(self.cache, media=False)
        self.noise: list[tuple[int, int]] = [(0, 0)] * slots  # per slot: (seed, first tick)
        lay = streamer.lay
        self._text_end = lay.obs + lay.text  # rows of a unit before its resp
        self._sinks, self._unit_rows = lay.sinks, lay.unit

    def _check(self, rows: KVRows | Span) -> None:
        if isinstance(rows, Span) != self.shared:
            held = "sharing the thinker's cache" if self.shared else "with its own copy of the thinker's cache"
            raise ValueError(f"a performer {held} got {type(rows).__name__}; both ends must agree on "
                             f"whether the cache is shared")

    def _check_sinks(self, rows: KVRows | Span, batch: int) -> None:
        self._check(rows)
        got = rows.k.shape[1] if isinstance(rows, KVRows) else batch
        if rows.start != 0 or rows.end != self._sinks or got != batch:
            raise ValueError(f"a session's initial cache must be rows [0, {self._sinks}) (the "
                             f"sinks) of {batch} slot(s), got [{rows.start}, {rows.end}) of {got}")

    def open(self, seed: int, rows: KVRows | Span) -> None:
        """The pair starts afresh at tick 0 (the thinker's fresh join): every slot's sinks."""
        self._check_sinks(rows, len(self.noise))
        if isinstance(rows, Span):
            self.cache.follow_reset()
            self.cache.advance(rows.end)
        else:
            self.cache.reset()
            self.cache.append(rows)
        self.noise = [(seed, 0)] * len(self.noise)

    def join(self, slot: int, seed: int, tick: int, rows: KVRows | Span) -> None:
        """A session joins in `slot` at `tick` beside the others: its sinks."""
        self._check_sinks(rows, 1)
        if isinstance(rows, Span):
            self.cache.masked = True  # as the thinker's reset_slot set it on its side
        else:
            self.cache.reset_slot(slot)
            self.cache.slot(slot).append(rows)
        self.noise[slot] = (seed, tick)

    def _unit_of(self, rows: KVRows | Span) -> int:
        """The unit whose text slots end `rows` (rows always end there)."""
        unit, off = divmod(rows.end - self._sinks - self._text_end, self._unit_rows)
        prev_resp = self._sinks + (unit - 1) * self._unit_rows + self._text_end  # resp_(n-1) starts
        if off or unit < 0 or rows.start != (self._sinks if unit == 0 else prev_resp):
            raise ValueError(f"rows [{rows.start}, {rows.end}) are not resp_(n-1), obs_n, text_n of "
                             f"one unit n (sinks {self._sinks}, {self._unit_rows} rows a unit); the "
                             f"thinker must ship each unit's new rows once, in order")
        return unit

    def on_rows(self, rows: KVRows | Span, rung: int = 0) -> Solved:
        """Append the rows of unit n (or follow the thinker's span of them) and solve resp_n at
        rung `rung` of the ladder."""
        self._check(rows)
        n = self._unit_of(rows)
        # 1. append resp_{n-1} (clean, from the thinker: it overwrites the solver's last step),
        #    obs_n and text_n; on a shared cache they are there, and so is `written`
        with self.timer.stage(n, "kv_update"):
            if isinstance(rows, Span):
                self.cache.advance(rows.end)
            else:
                self.cache.append(rows)
                for slot, (_, first) in enumerate(self.noise):
                    if first == n > 0:  # joined at this tick: resp_{n-1}'s rows are not its session's
                        self.cache.forget(slot, rows.start, self._sinks + n * self._unit_rows)
        # 2. each slot's noise seeded by (its session's seed, its unit); the solver's steps
        with self.timer.stage(n, "solve"):
            r = self.s.ladder[rung]
            if self.eval_delay_s:
                time.sleep(self.eval_delay_s * r.evaluations)
            noise = [unit_noise(self.s, seed, max(0, n - first)) for seed, first in self.noise]
            z = self.s.denoise(self.cache, n, Latents(*(torch.cat(x) for x in zip(*noise))), r)
        return Solved(n, z, self.timer.take(n))
