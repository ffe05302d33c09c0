"""The performer's core: its copy of the session's KV cache and the flow-matching solve.

  open(seed, rows)   a new session: reset the cache, append the initial cache (the sinks)
  on_rows(rows, rung) append resp_{n-1}, obs_n, text_n; solve resp_n from seeded noise at that
                     rung of the quality ladder: z_n

The noise of unit n comes from a generator seeded by (session seed, n) (`unit_noise`), so the
single-process reference path draws exactly the same noise. The performer never decodes and
never runs the text head. A plain class: no transport, no pipe, no clock.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from model.duplex import Latents
from model.kv_cache import KVRows
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
    def __init__(self, streamer: Streamer, eval_delay_s: float = 0.0):
        """`eval_delay_s`: test only, a sleep per solver evaluation, as a slower machine takes."""
        self.s, self.eval_delay_s = streamer, eval_delay_s
        self.timer = StageTimer()
        self.cache = streamer.new_cache()
        self.seed = 0
        lay = streamer.lay
        self._text_end = lay.obs + lay.text  # rows of a unit before its resp
        self._sinks, self._unit_rows = lay.sinks, lay.unit

    def open(self, seed: int, rows: KVRows) -> None:
        """A new session: the thinker's initial cache (the prefill sinks)."""
        if rows.start != 0 or rows.end != self._sinks:
            raise ValueError(f"initial cache must be rows [0, {self._sinks}) (the sinks), got "
                             f"[{rows.start}, {rows.end})")
        self.cache.reset()
        self.cache.append(rows)
        self.seed = seed

    def _unit_of(self, rows: KVRows) -> int:
        """The unit whose text slots end `rows` (rows always end there)."""
        unit, off = divmod(rows.end - self._sinks - self._text_end, self._unit_rows)
        prev_resp = self._sinks + (unit - 1) * self._unit_rows + self._text_end  # resp_(n-1) starts
        if off or unit < 0 or rows.start != (self._sinks if unit == 0 else prev_resp):
            raise ValueError(f"rows [{rows.start}, {rows.end}) are not resp_(n-1), obs_n, text_n of "
                             f"one unit n (sinks {self._sinks}, {self._unit_rows} rows a unit); the "
                             f"thinker must ship each unit's new rows once, in order")
        return unit

    def on_rows(self, rows: KVRows, rung: int = 0) -> Solved:
        """Append the rows of unit n and solve resp_n at rung `rung` of the ladder."""
        n = self._unit_of(rows)
        # 1. append resp_{n-1} (clean, from the thinker: it overwrites the solver's last step),
        #    obs_n and text_n
        with self.timer.stage(n, "kv_update"):
            self.cache.append(rows)
        # 2. noise seeded by (session seed, n); the solver's steps against the cache
        with self.timer.stage(n, "solve"):
            r = self.s.ladder[rung]
            if self.eval_delay_s:
                time.sleep(self.eval_delay_s * r.evaluations)
            z = self.s.denoise(self.cache, n, unit_noise(self.s, self.seed, n), r)
        return Solved(n, z, self.timer.take(n))
