"""A batch of sessions stepped together equals each session stepped alone: sessions with
different characters and inputs that join the batch at different ticks, one leaving and its
slot taken by a new call mid-way, a slot idle with nobody in it (fp32, 1e-5)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters as dynamo_counters

from model.config import tiny
from model.duplex import Latents, build_model
from model.streaming import Character, Streamer
from model.train import Conversation
from tests.model.synthetic import make_character, make_conversation

TICKS = 10
WINDOW = 3  # the ring wraps several times over the run


@dataclass
class Call:
    slot: int
    first: int  # the tick of its first unit
    units: int
    character: Character
    conv: Conversation
    noisy: Latents  # per unit: the latents the solver evaluates, at times t
    t: Tensor  # (1, units)

    def unit_at(self, tick: int) -> int | None:
        n = tick - self.first
        return n if 0 <= n < self.units else None


def _calls(model) -> list[Call]:
    plan = [(0, 0, TICKS), (1, 2, 4), (2, 4, 6), (1, 7, 3)]  # slot, first tick, units
    calls = []
    for i, (slot, first, units) in enumerate(plan):
        character = make_character(model.cfg, seed=10 + i)
        conv = make_conversation(model, character, units, seed=20 + i)
        g = torch.Generator().manual_seed(30 + i)
        noisy = Latents(*(torch.randn(x.shape, generator=g) for x in conv.resp))
        calls.append(Call(slot, first, units, character, conv, noisy, torch.rand(1, units, generator=g)))
    return calls


def _unit_inputs(call: Call, n: int, spu: int) -> tuple[Tensor, ...]:
    c = call.conv
    return (c.frames[:, 4 * n:4 * n + 4], c.audio[:, n * spu:(n + 1) * spu], c.text[:, n],
            Latents(call.noisy.video[:, n], call.noisy.audio[:, n]), call.t[:, n],
            Latents(c.resp.video[:, n], c.resp.audio[:, n]))


def _cat(parts: list) -> Tensor | Latents:
    if isinstance(parts[0], Latents):
        return Latents(*(torch.cat(x) for x in zip(*parts)))
    return torch.cat(parts)


def _step(s: Streamer, st, frames, audio, text, noisy, t, clean) -> dict[str, Tensor]:
    s.observe(st, frames, audio)
    _, logits = s.speak(st, forced=text)
    v = s.velocity(st.cache, st.unit, noisy, t)
    s.commit(st, clean)
    out_frames, out_audio = s.decode(st, clean)
    return {"logits": logits, "v_video": v.video, "v_audio": v.audio, "frames": out_frames, "audio": out_audio}


def _alone(s: Streamer, call: Call, spu: int) -> list[dict[str, Tensor]]:
    st = s.new_state()
    s.prefill(st, call.character)
    return [_step(s, st, *_unit_inputs(call, n, spu)) for n in range(call.units)]


@pytest.mark.parametrize("backend,compiled", [("reference", False), ("sdpa", False), ("sdpa", True)],
                         ids=["reference", "sdpa", "sdpa-compiled"])
def test_a_batch_of_sessions_equals_each_session_alone(backend: str, compiled: bool, tmp_path) -> None:
    cfg = tiny().model_copy(update={"window_units": WINDOW})
    model = build_model(cfg, seed=0)
    model.transformer.backend = backend
    spu = cfg.audio.samples_per_unit
    calls = _calls(model)
    expected = {id(c): _alone(Streamer(model), c, spu) for c in calls}
    s = Streamer(model, compile=True, compile_cache_dir=str(tmp_path)) if compiled else Streamer(model)
    if compiled:
        s.compiled.warm_up(batch=3)
        graphs = dynamo_counters["stats"]["unique_graphs"]

    st = s.new_state(batch=3)
    idle = _unit_inputs(calls[0], 0, spu)  # what a slot without a call is fed (ignored)
    compared = 0
    for tick in range(TICKS):
        for c in calls:
            if c.first == tick:
                s.join(st, c.slot, c.character)
        rows = []
        for slot in range(3):
            here = [c for c in calls if c.slot == slot and c.unit_at(tick) is not None]
            rows.append(_unit_inputs(here[0], here[0].unit_at(tick), spu) if here else idle)
        out = _step(s, st, *(_cat([r[i] for r in rows]) for i in range(len(idle))))
        for c in calls:
            n = c.unit_at(tick)
            if n is None:
                continue
            for key, want in expected[id(c)][n].items():
                torch.testing.assert_close(out[key][c.slot:c.slot + 1].float(), want.float(), atol=1e-5, rtol=0,
                                           msg=lambda m: f"{key} of the call in slot {c.slot}, unit {n}: {m}")
            compared += 1
    assert compared == sum(c.units for c in calls)
    if compiled:  # warm_up compiled the batch's shapes, joined slots (masked) included: no call waits
        assert dynamo_counters["stats"]["unique_graphs"] == graphs, "a graph was compiled after warm_up"
        assert s.compiled.failed == []


def test_a_slot_that_joins_sees_nothing_of_the_call_before_it(model, character) -> None:
    """The rows of the slot's previous call are hidden from the new one, not just overwritten."""
    s = Streamer(model)
    st = s.new_state(batch=2)
    s.prefill(st, character)
    conv = make_conversation(model, character, 3, batch=2)
    spu = model.cfg.audio.samples_per_unit
    for n in range(2):
        s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spu:(n + 1) * spu])
        s.speak(st)
        s.commit(st, Latents(conv.resp.video[:, n], conv.resp.audio[:, n]))
    s.join(st, 1, character)
    lay = model.layout
    assert st.cache.masked
    assert st.cache.written[0, :lay.sinks + 2 * lay.unit].all()
    assert st.cache.written[1, :lay.sinks].all() and not st.cache.written[1, lay.sinks:].any()
    assert (st.cache.k[:, 1, :, lay.sinks:] == 0).all()
