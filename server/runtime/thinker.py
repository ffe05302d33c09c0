"""The thinker's core: one session's input side (encode, text) and output side (KV of the
response, decode), driven by two events.

  on_unit(n, frames, audio, text)  input unit n is complete (text: bytes the caller typed)
  on_latents(n, z)           the performer's latents of unit n have arrived

The order inside is what lets the two processes overlap. When input n is already waiting as
z_{n-1} arrives, z_{n-1} is committed first (observe(n) needs it in the cache), then unit n is
encoded and spoken and its KV rows are shipped (the performer starts solving n), and only then
is z_{n-1} decoded: the decode of n - 1 runs while the performer solves n. When nothing waits,
z_{n-1} is decoded first, so that its output is not held up by the commit. Both orders give the
same results: decode and commit touch different state. An input that arrives before z_{n-1}
waits in a bounded queue; nothing is skipped.

Typed text enters the stream as text input: its bytes queue up and fill the text slots of the
next units in place of the model's own prediction (k bytes a unit, PAD after the last; the
model then conditions on them as on any text of the stream, and they come out as captions).

A plain class, called by tests in-process and by the worker shell (worker.py): it never
touches a transport, a pipe, a clock or a signal. `ship` and `emit` are the shell's callbacks.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from model.config import PAD

from model.duplex import Latents
from model.kv_cache import KVRows
from model.media import frames_to_model, frames_to_uint8
from model.streaming import Character, SessionState, Streamer
from server.runtime.timings import StageTimer


@dataclass
class Decoded:
    """One unit of the avatar: what it says, its latents, and the decoded media."""
    unit: int
    text: Tensor  # (B, k) int64
    z: Latents
    frames: Tensor  # (B, 4, H, W, 3) uint8 RGB
    audio: Tensor  # (B, samples_per_unit) in [-1, 1]
    stages: dict[str, float]  # seconds per stage spent on this unit by the thinker


def typed_slots(typed: deque[int], k: int, device: torch.device) -> Tensor | None:
    """The next k typed bytes as forced text slots (1, k), PAD after the last; None when none wait."""
    if not typed:
        return None
    slots = [typed.popleft() for _ in range(min(k, len(typed)))]
    return torch.tensor([slots + [PAD] * (k - len(slots))], dtype=torch.long, device=device)


Ship = Callable[[int, KVRows, int], None]  # (unit, its new KV rows, its rung) -> the performer
Emit = Callable[[Decoded], None]  # one decoded unit -> the output


class Thinker:
    def __init__(self, streamer: Streamer, ship: Ship, emit: Emit, timer: StageTimer | None = None,
                 max_pending: int = 8):
        self.s, self.ship, self.emit = streamer, ship, emit
        self.timer = timer if timer is not None else StageTimer()
        self.max_pending = max_pending
        self.state: SessionState | None = None
        self._pending: deque[tuple[int, Tensor, Tensor, bytes, int]] = deque()
        self._text: dict[int, Tensor] = {}
        self._typed: deque[int] = deque()  # typed bytes not yet in a text slot
        self._next_input = 0  # the unit index on_unit expects next
        self._awaiting: int | None = None  # the unit whose rows were shipped, latents not yet back
        self._sent = 0  # logical KV rows the performer already holds

    # -- session ----------------------------------------------------------------------------
    def open(self, character: Character) -> KVRows:
        """Prefill the character; returns the initial cache (the sinks) for the performer."""
        # one cache for every session of this worker, as the performer keeps its own: memory is
        # allocated once and captured CUDA graphs are not captured again each call
        self.state = st = self.s.new_state(cache=None if self.state is None else self.state.cache)
        self._pending.clear()
        self._text.clear()
        self._typed.clear()
        self._next_input, self._awaiting = 0, None
        self.s.prefill(st, character)
        self._sent = st.cache.length
        return st.cache.rows(0, self._sent)

    @property
    def idle(self) -> bool:
        """No input waiting and no latents outstanding: the session can close."""
        return not self._pending and self._awaiting is None

    # -- events -----------------------------------------------------------------------------
    def on_unit(self, unit: int, frames: Tensor, audio: Tensor, text: bytes = b"", rung: int = 0) -> None:
        """Input unit `unit` as the wire carries it: frames (B, 4, H, W, 3) uint8 RGB (converted
        here, once, on this worker's device), audio (B, samples_per_unit) in [-1, 1];
        `text`: bytes typed since the previous unit (B = 1); `rung`: of the quality ladder, for
        the performer's solve of this unit."""
        if self.state is None:
            raise RuntimeError(f"input unit {unit} before open(): start the session first")
        if unit != self._next_input:
            raise ValueError(f"input unit {unit} out of order: expected unit {self._next_input}; "
                             f"units must be handed over once each, in order")
        if len(self._pending) >= self.max_pending:
            raise OverflowError(f"{len(self._pending)} input units already wait for the performer "
                                f"(max_pending={self.max_pending}); the pair has fallen behind")
        self._next_input += 1
        self._pending.append((unit, frames_to_model(frames, audio.dtype), audio, text, rung))
        self._start_next()

    def on_latents(self, unit: int, z: Latents) -> None:
        """The performer's z of `unit` (the unit whose rows were shipped last)."""
        st = self.state
        if st is None or unit != self._awaiting:
            raise ValueError(f"latents of unit {unit} arrived, expected those of unit {self._awaiting}")
        self._awaiting = None
        if self._pending:
            # unit n + 1 already waits: 1. commit z_n (observe(n + 1) needs its KV),
            # 2. start n + 1 so the performer solves it, 3. decode z_n meanwhile
            self._commit(unit, z)
            self._start_next()
            self._decode(unit, z)
        else:
            # nothing waits: 1. decode z_n first, the output is not held up by its KV,
            # 2. commit z_n, ready for unit n + 1
            self._decode(unit, z)
            self._commit(unit, z)

    def _commit(self, unit: int, z: Latents) -> None:
        # timed as unit n + 1's kv_update: resp_n's rows travel with unit n + 1's rows
        with self.timer.stage(unit + 1, "kv_update"):
            self.s.commit(self.state, z)

    def _decode(self, unit: int, z: Latents) -> None:
        with self.timer.stage(unit, "decode"):
            frames, audio = self.s.decode(self.state, z)
            frames = frames_to_uint8(frames)
        self.emit(Decoded(unit, self._text.pop(unit), z, frames, audio, self.timer.take(unit)))

    def _start_next(self) -> None:
        st = self.state
        if not self._pending or self._awaiting is not None or st is None:
            return
        n, frames, audio, text, rung = self._pending.popleft()
        self._typed.extend(text)
        # 1. encode obs_n and append its KV
        with self.timer.stage(n, "encode"):
            self.s.observe(st, frames, audio)
        # 2. the k text slots of unit n
        with self.timer.stage(n, "language"):
            tokens, _ = self.s.speak(st, forced=typed_slots(self._typed, self.s.lay.text, frames.device))
        self._text[n] = tokens
        # 3. ship the rows the performer lacks: resp_{n-1}, obs_n, text_n (all layers)
        rows = st.cache.rows(self._sent, st.cache.length)
        self._sent, self._awaiting = st.cache.length, n
        self.ship(n, rows, rung)
