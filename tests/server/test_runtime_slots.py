"""One pair, many calls: the thinker and performer cores stepping a batch of session slots on
one tick equal each session run alone (the single-process reference path), for sessions with
different characters, inputs, noise seeds and typed text that join at different ticks, one
leaving and a new one taking its slot, a slot idle meanwhile; inputs in lockstep with the
latents or one tick ahead of them (a join then lands between a commit and the next observe)."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model.config import ModelConfig
from model.duplex import build_model
from model.kv_cache import KVRows, Span
from model.streaming import Character, Streamer
from server.runtime.performer import Performer
from server.runtime.reference import run_single
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.thinker import Decoded, Thinker

SLOTS, TICKS = 3, 14  # tiny's window is 3 units: the ring wraps several times


@dataclass
class Call:
    slot: int
    first: int  # the tick of its unit 0
    units: int
    character: Character
    stream: int  # its synthetic input stream
    seed: int  # its noise seed
    typed: dict[int, bytes]  # unit -> bytes typed with it
    cfg: ModelConfig

    @property
    def last(self) -> int:
        return self.first + self.units - 1

    def unit(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_unit(self.cfg, self.stream, n)


def _calls(cfg: ModelConfig) -> list[Call]:
    plan = [(0, 0, TICKS, {5: "Hé".encode()}), (1, 2, 5, {1: b"hi!"}), (2, 4, 8, {}), (1, 9, 5, {0: b"yo"})]
    return [Call(slot, first, units, synthetic_character(cfg, seed=10 + i), stream=i, seed=7 + i, typed=typed, cfg=cfg)
            for i, (slot, first, units, typed) in enumerate(plan)]


def _batched(streamer: Streamer, calls: list[Call], ahead: bool, shared: bool) -> dict[int, list[Decoded]]:
    cfg = streamer.model.cfg
    cache = streamer.new_cache(SLOTS) if shared else None  # the performer holds the thinker's
    performer = Performer(streamer, slots=SLOTS, shared=cache)
    rows: deque[tuple[int, KVRows | Span]] = deque()
    in_slot: dict[int, int] = {}  # slot -> the call (index) whose outputs it emits now
    got: dict[int, list[Decoded]] = {i: [] for i in range(len(calls))}

    def joined(slot: int, seed: int, tick: int, sinks: KVRows | Span, fresh: bool) -> None:
        if fresh:
            performer.open(seed, sinks)
        else:
            performer.join(slot, seed, tick, sinks)

    thinker = Thinker(streamer, ship=lambda t, r, rung: rows.append((t, r)),
                      emit=lambda d: got[in_slot[d.slot]].append(d), slots=SLOTS, joined=joined, shared=cache)

    def join_and_submit(t: int) -> None:
        for i, c in enumerate(calls):
            if c.first == t:
                thinker.join(c.slot, c.character, c.seed)
                in_slot[c.slot] = i
        spu, v = cfg.audio.samples_per_unit, cfg.video
        frames = np.zeros((SLOTS, 4, v.height, v.width, 3), np.uint8)  # idle slots: black, silent
        audio = np.zeros((SLOTS, spu), np.float32)
        texts = [b""] * SLOTS
        for c in calls:
            if c.first <= t <= c.last:
                frames[c.slot], audio[c.slot] = (x[0] for x in c.unit(t - c.first))
                texts[c.slot] = c.typed.get(t - c.first, b"")
        thinker.on_unit(t, torch.from_numpy(frames), torch.from_numpy(audio), texts)

    def solve_and_leave(t: int) -> None:
        sent, r = rows.popleft()
        solved = performer.on_rows(r)
        assert sent == solved.unit == t
        thinker.on_latents(t, solved.z)
        for c in calls:
            if c.last == t:
                thinker.leave(c.slot)

    if ahead:
        join_and_submit(0)
        for t in range(TICKS):
            if t + 1 < TICKS:
                join_and_submit(t + 1)  # waits while tick t is solved; its joins land after commit(t)
            solve_and_leave(t)
    else:
        for t in range(TICKS):
            join_and_submit(t)
            solve_and_leave(t)
    assert thinker.idle and not rows
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ahead, shared", [(False, False), (True, False), (True, True)],
                         ids=["lockstep", "ahead", "ahead-shared-cache"])
def test_a_batch_of_session_slots_equals_each_session_alone(tiny_cfg: ModelConfig, ahead: bool, shared: bool) -> None:
    streamer = Streamer(build_model(tiny_cfg, seed=0))
    calls = _calls(tiny_cfg)
    got = _batched(streamer, calls, ahead, shared)
    for i, c in enumerate(calls):
        inputs = (tuple(map(torch.from_numpy, c.unit(n))) for n in range(c.units))
        alone = run_single(streamer, c.character, c.seed, inputs, c.typed)
        assert [d.unit for d in got[i]] == list(range(c.units)), f"call {i}"
        assert all(d.slot == c.slot for d in got[i])
        for d, ref in zip(got[i], alone):
            where = f"call {i} unit {d.unit}"
            assert torch.equal(d.text, ref.text), where
            for a, b in ((d.z.video, ref.z.video), (d.z.audio, ref.z.audio), (d.audio, ref.audio)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=where)
            assert (d.frames.int() - ref.frames.int()).abs().max() <= 1, where
    typed = torch.cat([got[1][n].text[0] for n in (1, 2)]).tolist()[:3]
    assert bytes(typed) == b"hi!"  # a slot's typed text is its own
