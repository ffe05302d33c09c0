"""The single-process reference path: the same Streamer calls as the split, in one process,
in the same order, with the same seeded noise. The two-process pair must equal it bit for bit
on CPU (tests/server/test_runtime_split.py). It keeps no timings: bench/ times the real pair.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Sequence

from torch import Tensor

from model.media import frames_to_model, frames_to_uint8
from model.streaming import Character, Streamer
from server.runtime.performer import unit_noise
from server.runtime.thinker import Decoded, typed_slots


def run_single(streamer: Streamer, character: Character, seed: int,
               inputs: Iterable[tuple[Tensor, Tensor]], typed: dict[int, bytes] | None = None,
               rungs: Sequence[int] | None = None) -> list[Decoded]:
    """inputs: per unit as the wire carries it (frames (B, 4, H, W, 3) uint8, audio (B,
    samples_per_unit) float); typed: unit ->
    bytes typed with that unit (the thinker's rule: they fill the next text slots); rungs: per
    unit, the quality ladder's rung of its solve (default: the top); one Decoded a unit."""
    s = streamer
    st = s.new_state()
    s.prefill(st, character)
    queue: deque[int] = deque()
    out = []
    for n, (frames, audio) in enumerate(inputs):
        s.observe(st, frames_to_model(frames, audio.dtype), audio)
        queue.extend((typed or {}).get(n, b""))
        tokens, _ = s.speak(st, forced=typed_slots([queue], s.lay.text, frames.device))
        rung = s.ladder[rungs[n] if rungs is not None else 0]
        z = s.denoise(st.cache, n, unit_noise(s, seed, n, batch=frames.shape[0]), rung)
        s.commit(st, z)
        video, audio_out = s.decode(st, z)
        out.append(Decoded(n, tokens, z, frames_to_uint8(video), audio_out, stages={}))
    return out
