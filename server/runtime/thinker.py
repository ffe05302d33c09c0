"""The thinker's core: the input side (encode, text) and the output side (KV of the response,
decode) of a batch of session slots on one unit clock, the pair's tick, driven by events.

  join(slot, character, seed)      a session starts in `slot` at the next tick
  leave(slot)                      its session ended: the slot idles from the next tick on
  on_unit(tick, frames, audio, texts)  every slot's input of `tick` is complete (texts: bytes
                                   each slot's caller typed; an idle slot's input is ignored)
  on_latents(tick, z)              the performer's latents of `tick` have arrived

The order inside is what lets the two processes overlap. When input t is already waiting as
z_{t-1} arrives, z_{t-1} is committed first (observe(t) needs it in the cache), then tick t is
encoded and spoken and its KV rows are shipped (the performer starts solving t), and only then
is z_{t-1} decoded: the decode of t - 1 runs while the performer solves t. When nothing waits,
z_{t-1} is decoded first, so that its output is not held up by the commit. Both orders give the
same results: decode and commit touch different state. An input that arrives before z_{t-1}
waits in a bounded queue; nothing is skipped.

Joins take effect between ticks, after commit(t-1) and before observe(t) (a join before the
commit would mark the idle slot's resp_{t-1} rows as the new session's); `joined` tells the
shell (the performer must apply it before tick t's rows). A join while no slot is in a session
starts the pair afresh at tick 0: the cache reset and prefilled in every row (one slot is the
single-session pair; its sessions run exactly as alone). A join beside running sessions is
model/streaming.py's `join` (a masked batch). Each slot's session counts its own units from its
first tick; `Decoded.unit` is that count.

Typed text enters the stream as text input: its bytes queue up per slot and fill the text
slots of that slot's next units in place of the model's own prediction (k bytes a unit, PAD
after the last; the model then conditions on them as on any text, and they come out as captions).

On a cache the performer shares (`shared`: the same tensors in both processes), `ship` and
`joined` carry a `Span` of the rows written instead of the rows (performer.py says why that
needs no lock).

A plain class, called by tests in-process and by the worker shell (worker.py): it never
touches a transport, a pipe, a clock or a signal. `ship`, `joined` and `emit` are the shell's.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from model.config import PAD
from model.duplex import Latents
from model.kv_cache import KVCache, KVRows, Span
from model.media import frames_to_model, frames_to_uint8
from model.streaming import Character, SessionState, Streamer
from server.runtime.timings import StageTimer


@dataclass
class Decoded:
    """One unit of one session of the avatar: what it says, its latents, the decoded media."""
    unit: int  # the session's own unit index
    text: Tensor  # (1, k) int64
    z: Latents
    frames: Tensor  # (1, 4, H, W, 3) uint8 RGB
    audio: Tensor  # (1, samples_per_unit) in [-1, 1]
    stages: dict[str, float]  # seconds per stage spent on this tick by the thinker
    slot: int = 0


def typed_slots(typed: Sequence[deque[int]], k: int, device: torch.device) -> Tensor | None:
    """The next k typed bytes of each slot as forced text slots (B, k): PAD after a slot's last
    byte, -1 (the model's own) in a slot with none waiting; None when no slot has any."""
    if not any(typed):
        return None
    rows = []
    for q in typed:
        taken = [q.popleft() for _ in range(min(k, len(q)))]
        rows.append(taken + [PAD] * (k - len(taken)) if taken else [-1] * k)
    return torch.tensor(rows, dtype=torch.long, device=device)


# (tick, its new KV rows (a Span of them on a shared cache), its rung) -> the performer
Ship = Callable[[int, KVRows | Span, int], None]
# (slot, seed, first tick, its sinks rows, fresh: every row's, the pair starts afresh) -> the performer
Joined = Callable[[int, int, int, KVRows | Span, bool], None]
Emit = Callable[[Decoded], None]  # one decoded unit of one session -> the output


@dataclass
class _Slot:
    first_tick: int  # the tick of the session's unit 0
    typed: deque[int]  # typed bytes not yet in a text slot


class Thinker:
    def __init__(self, streamer: Streamer, ship: Ship, emit: Emit, timer: StageTimer | None = None,
                 max_pending: int = 8, slots: int = 1, joined: Joined | None = None,
                 shared: KVCache | None = None):
        """`shared`: a cache of `slots` slots the performer holds too (performer.py): spans of it
        are announced, no rows are shipped."""
        self.s, self.ship, self.emit = streamer, ship, emit
        self.joined = joined if joined is not None else (lambda *joined: None)
        self.timer = timer if timer is not None else StageTimer()
        self.max_pending = max_pending
        self.shared = shared is not None
        if shared is not None and shared.k.shape[1] != slots:
            raise ValueError(f"the shared cache holds {shared.k.shape[1]} slot(s), the thinker {slots}")
        # one cache for every session of this pair: memory is allocated once and captured CUDA
        # graphs are not captured again each call
        self.state: SessionState = streamer.new_state(batch=slots, cache=shared)
        if streamer.graphs is not None:  # captured now: a call joining later waits for none
            streamer.warm_up_graphs(self.state.cache)
        self._sessions: dict[int, _Slot] = {}  # slot -> its session, from its first tick
        self._joining: dict[int, tuple[Character, int]] = {}  # slot -> (character, seed)
        self._pending: deque[tuple[int, Tensor, Tensor, Sequence[bytes], int]] = deque()
        # tick -> its text slots and the sessions its outputs go to (those in it when it started)
        self._started: dict[int, tuple[Tensor, dict[int, _Slot]]] = {}
        self._next_input = 0  # the tick on_unit expects next
        self._awaiting: int | None = None  # the tick whose rows were shipped, latents not yet back
        self._sent = 0  # logical KV rows the performer already holds

    @property
    def slots(self) -> int:
        return self.state.last_text.shape[0]

    @property
    def idle(self) -> bool:
        """No input waiting and no latents outstanding: every output is out."""
        return not self._pending and self._awaiting is None

    @property
    def active(self) -> bool:
        """A session is in a slot, or joining one."""
        return bool(self._sessions or self._joining)

    @property
    def next_tick(self) -> int:
        """The tick on_unit expects next."""
        return self._next_input

    def finished(self, tick: int) -> bool:
        """Every tick up to `tick` has been decoded (its outputs emitted)."""
        return all(t > tick for t in (*self._started, *(p[0] for p in self._pending)))

    # -- sessions ---------------------------------------------------------------------------
    def join(self, slot: int, character: Character, seed: int) -> None:
        """A session starts in `slot` (idle) at the next tick; `joined` says when."""
        if not 0 <= slot < self.slots or slot in self._sessions or slot in self._joining:
            raise ValueError(f"slot {slot} is not a free slot of this pair's {self.slots}")
        self._joining[slot] = (character, seed)
        if self.idle:  # between ticks: at once
            self._apply_joins()

    def leave(self, slot: int) -> None:
        """The session in `slot` ended: its outputs stop; the slot idles from the next tick."""
        self._sessions.pop(slot, None)
        self._joining.pop(slot, None)

    def _apply_joins(self) -> list[int]:
        """Between ticks (the cache holds every committed tick, nothing of the next). With no
        session on the pair the first join waits until nothing is in flight, then starts the
        pair afresh at tick 0 with its character in every row. Returns the slots joined."""
        st, lay, done = self.state, self.s.lay, []
        for slot, (character, seed) in list(self._joining.items()):
            fresh = not self._sessions
            if fresh and not self.idle:
                break
            if fresh:
                self.state = st = self.s.new_state(batch=self.slots, cache=st.cache)
                self._next_input, self._sent = 0, lay.sinks
                self.s.prefill(st, character)
            else:
                self.s.join(st, slot, character)
            rows = self._rows(0, lay.sinks, None if fresh else slot)
            del self._joining[slot]
            self._sessions[slot] = _Slot(first_tick=st.unit, typed=deque())
            self.joined(slot, seed, st.unit, rows, fresh)
            done.append(slot)
        return done

    # -- events -----------------------------------------------------------------------------
    def on_unit(self, tick: int, frames: Tensor, audio: Tensor, texts: Sequence[bytes] = (),
                rung: int = 0) -> None:
        """Every slot's input of `tick` as the wire carries it: frames (B, 4, H, W, 3) uint8 RGB
        (converted here, once, on this worker's device), audio (B, samples_per_unit) in
        [-1, 1] with B the pair's slots; `texts`: per slot, bytes typed since its previous unit;
        `rung`: of the quality ladder, for the performer's solve of this tick."""
        if not self._sessions and not self._joining:
            raise RuntimeError(f"input tick {tick} with no session: join a session first")
        if tick != self._next_input:
            raise ValueError(f"input tick {tick} out of order: expected tick {self._next_input}; "
                             f"ticks must be handed over once each, in order")
        if len(self._pending) >= self.max_pending:
            raise OverflowError(f"{len(self._pending)} input ticks already wait for the performer "
                                f"(max_pending={self.max_pending}); the pair has fallen behind")
        if frames.shape[0] != self.slots or audio.shape[0] != self.slots:
            raise ValueError(f"input tick {tick}: frames and audio must have one row per slot "
                             f"({self.slots}), got {frames.shape[0]} and {audio.shape[0]}")
        self._next_input += 1
        self._pending.append((tick, frames_to_model(frames, audio.dtype), audio, texts, rung))
        self._start_next()

    def on_latents(self, tick: int, z: Latents) -> None:
        """The performer's z of `tick` (the tick whose rows were shipped last)."""
        if tick != self._awaiting:
            raise ValueError(f"latents of tick {tick} arrived, expected those of tick {self._awaiting}")
        self._awaiting = None
        if self._pending:
            # tick t + 1 already waits: 1. commit z_t (observe(t + 1) needs its KV) and let
            # sessions join, 2. start t + 1 so the performer solves it, 3. decode z_t meanwhile;
            # that decode ran in the joined slots' rows too: their decoder states start after it
            self._commit(tick, z)
            joined = self._apply_joins()
            self._start_next()
            self._decode(tick, z)
            for slot in joined:
                self.state.decoder.reset(slot)
        else:
            # nothing waits: 1. decode z_t first, the output is not held up by its KV,
            # 2. commit z_t, ready for tick t + 1
            self._decode(tick, z)
            self._commit(tick, z)
            self._apply_joins()

    def _commit(self, tick: int, z: Latents) -> None:
        # timed as tick t + 1's kv_update: resp_t's rows travel with tick t + 1's rows
        with self.timer.stage(tick + 1, "kv_update"):
            self.s.commit(self.state, z)

    def _decode(self, tick: int, z: Latents) -> None:
        with self.timer.stage(tick, "decode"):
            frames, audio = self.s.decode(self.state, z)
            frames = frames_to_uint8(frames)
        (text, sessions), stages = self._started.pop(tick), self.timer.take(tick)
        for slot, session in sessions.items():
            if self._sessions.get(slot) is session:  # not left since
                one = slice(slot, slot + 1)
                self.emit(Decoded(tick - session.first_tick, text[one], Latents(z.video[one], z.audio[one]),
                                  frames[one], audio[one], stages, slot))

    def _start_next(self) -> None:
        st = self.state
        if not self._pending or self._awaiting is not None:
            return
        t, frames, audio, texts, rung = self._pending.popleft()
        for slot, text in enumerate(texts):
            if slot in self._sessions:
                self._sessions[slot].typed.extend(text)
        # 1. encode obs_t and append its KV
        with self.timer.stage(t, "encode"):
            self.s.observe(st, frames, audio)
        # 2. the k text slots of tick t
        typed = [self._sessions[b].typed if b in self._sessions else deque() for b in range(self.slots)]
        with self.timer.stage(t, "language"):
            tokens, _ = self.s.speak(st, forced=typed_slots(typed, self.s.lay.text, frames.device))
        self._started[t] = tokens, dict(self._sessions)
        # 3. ship the rows the performer lacks: resp_{t-1}, obs_t, text_t (all layers)
        rows = self._rows(self._sent, st.cache.length)
        self._sent, self._awaiting = st.cache.length, t
        self.ship(t, rows, rung)

    def _rows(self, start: int, end: int, slot: int | None = None) -> KVRows | Span:
        """What the performer needs of logical rows [start, end) (of one slot, or all)."""
        if self.shared:
            return Span(start, end)
        rows = self.state.cache.rows(start, end)
        return rows if slot is None else KVRows(start, rows.k[:, slot:slot + 1], rows.v[:, slot:slot + 1])
