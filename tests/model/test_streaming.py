"""Streaming == offline: the unit-by-unit path through the KV cache gives the same text logits
and velocities as the whole-sequence forward under the block-causal mask (DESIGN's key test)."""
from __future__ import annotations

import pytest
import torch

from model.config import FlowConfig, tiny
from model.duplex import Latents, build_model
from model.flow import Rung, quality_ladder, solve
from model.streaming import Streamer
from model.train import forward_sequence
from tests.model.synthetic import make_character, make_conversation

UNITS = 7


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("window", [
    pytest.param(UNITS, id="W=7,full-history"),
    pytest.param(3, id="W=3,ring-wraps"),
    pytest.param(1, id="W=1,one-slot"),
])
def test_streaming_equals_offline_under_block_causal_mask(window: int, backend: str) -> None:
    cfg = tiny().model_copy(update={"window_units": window})
    model = build_model(cfg, seed=0)
    model.transformer.backend = backend
    character = make_character(cfg)
    conv = make_conversation(model, character, UNITS)
    g = torch.Generator().manual_seed(3)
    noisy = Latents(*(torch.randn(x.shape, generator=g) for x in conv.resp))
    t = torch.rand(1, UNITS, generator=g)
    with torch.no_grad():
        logits_off, v_off = forward_sequence(model, conv, noisy, t, window=window)[:2]

    s = Streamer(model)
    st = s.new_state()
    s.prefill(st, character)
    spf = cfg.audio.samples_per_unit
    for n in range(UNITS):
        s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
        _, logits = s.speak(st, forced=conv.text[:, n])
        v = s.velocity(st.cache, n, Latents(noisy.video[:, n], noisy.audio[:, n]), t[:, n])
        s.commit(st, Latents(conv.resp.video[:, n], conv.resp.audio[:, n]))
        torch.testing.assert_close(logits, logits_off[:, n].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(v.video, v_off.video[:, n], atol=1e-5, rtol=0)
        torch.testing.assert_close(v.audio, v_off.audio[:, n], atol=1e-5, rtol=0)
    assert st.cache.length == model.layout.sinks + UNITS * model.layout.unit


def test_cache_memory_is_fixed_whatever_the_call_length(model, character) -> None:
    s = Streamer(model)
    st = s.new_state()
    before = (st.cache.k.data_ptr(), st.cache.nbytes)
    s.prefill(st, character)
    conv = make_conversation(model, character, 2 * model.cfg.window_units + 1)
    spf = model.cfg.audio.samples_per_unit
    for n in range(conv.units):
        s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
        s.speak(st)
        s.commit(st, s.denoise(st.cache, n, s.sample_noise(1, torch.Generator().manual_seed(n))))
    assert (st.cache.k.data_ptr(), st.cache.nbytes) == before
    assert st.cache.capacity == model.layout.cache_rows


def test_observe_before_commit_is_a_clear_error(model, character) -> None:
    s = Streamer(model)
    st = s.new_state()
    s.prefill(st, character)
    conv = make_conversation(model, character, 2)
    spf = model.cfg.audio.samples_per_unit
    s.observe(st, conv.frames[:, :4], conv.audio[:, :spf])
    s.speak(st)
    with pytest.raises(RuntimeError, match="observe\\(unit 0\\) needs"):
        s.observe(st, conv.frames[:, 4:8], conv.audio[:, spf:2 * spf])


def test_same_seed_same_weights_same_outputs(cfg, character) -> None:
    def run() -> list[torch.Tensor]:
        model = build_model(cfg, seed=5)
        s = Streamer(model)
        st = s.new_state()
        s.prefill(st, character)
        conv = make_conversation(model, character, 3)
        spf = cfg.audio.samples_per_unit
        out = []
        for n in range(3):
            s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
            tokens, _ = s.speak(st)
            z = s.denoise(st.cache, n, s.sample_noise(1, torch.Generator().manual_seed(n)))
            s.commit(st, z)
            frames, audio = s.decode(st, z)
            out += [tokens, z.video, z.audio, frames, audio]
        return out

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    other = build_model(cfg, seed=6)
    assert not torch.equal(other.text_head.weight, build_model(cfg, seed=5).text_head.weight)


@pytest.mark.parametrize("window", [pytest.param(None, id="full-history"), pytest.param(2, id="W=2")])
def test_a_longer_conversation_never_changes_earlier_outputs(model, character, window) -> None:
    g = torch.Generator().manual_seed(4)
    long = make_conversation(model, character, 6)
    noisy = Latents(*(torch.randn(x.shape, generator=g) for x in long.resp))
    t = torch.rand(1, 6, generator=g)
    short = make_conversation(model, character, 6)
    short.frames, short.audio = long.frames[:, :16], long.audio[:, :4 * model.cfg.audio.samples_per_unit]
    short.text, short.resp = long.text[:, :4], Latents(long.resp.video[:, :4], long.resp.audio[:, :4])
    with torch.no_grad():
        logits_l, v_l = forward_sequence(model, long, noisy, t, window)[:2]
        logits_s, v_s = forward_sequence(model, short, Latents(noisy.video[:, :4], noisy.audio[:, :4]), t[:, :4], window)[:2]
    torch.testing.assert_close(logits_s, logits_l[:, :4], atol=1e-5, rtol=0)
    torch.testing.assert_close(v_s.video, v_l.video[:, :4], atol=1e-5, rtol=0)
    assert not torch.allclose(logits_l[:, 4], logits_l[:, 3])


def _ladder_cases() -> list:
    cases = []
    for solver in ("euler", "heun"):
        n_rungs = len(quality_ladder(3, solver))
        cases += [pytest.param(solver, [r] * UNITS, id=f"{solver},rung={r}") for r in range(n_rungs)]
        cases.append(pytest.param(solver, [(3 * n) % n_rungs for n in range(UNITS)], id=f"{solver},mixed"))
    return cases


@pytest.mark.parametrize("solver, schedule", _ladder_cases())
def test_streaming_solve_equals_offline_solve_at_every_rung_of_the_ladder(solver: str, schedule: list[int]) -> None:
    """Each rung is a legal configuration: a unit solved at any rung against the cache (the
    ladder may change rung every unit) equals the same solve run on the whole-sequence forward
    under the block-causal mask, whose context holds the latents streamed before it."""
    cfg = tiny().model_copy(update={"window_units": 3, "flow": FlowConfig(steps=3, solver=solver)})
    model = build_model(cfg, seed=0)
    character = make_character(cfg)
    conv = make_conversation(model, character, UNITS)
    s = Streamer(model)
    st = s.new_state()
    s.prefill(st, character)
    spf = cfg.audio.samples_per_unit
    noises, streamed = [], []
    for n in range(UNITS):
        s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
        s.speak(st, forced=conv.text[:, n])
        noises.append(s.sample_noise(1, torch.Generator().manual_seed(n)))
        streamed.append(s.denoise(st.cache, n, noises[-1], s.ladder[schedule[n]]))
        s.commit(st, streamed[-1])
    conv.resp = Latents(*(torch.stack([z[i] for z in streamed], 1) for i in range(2)))
    for n in range(UNITS):
        def offline_velocity(x: tuple[torch.Tensor, ...], t: torch.Tensor, n: int = n) -> tuple[torch.Tensor, ...]:
            noisy = Latents(conv.resp.video.clone(), conv.resp.audio.clone())
            noisy.video[:, n], noisy.audio[:, n] = x
            times = torch.zeros(1, UNITS)
            times[:, n] = t
            with torch.no_grad():
                _, v = forward_sequence(model, conv, noisy, times, window=cfg.window_units)[:2]
            return v.video[:, n], v.audio[:, n]
        rung = s.ladder[schedule[n]]
        z_off = solve(offline_velocity, tuple(noises[n]), rung.steps, cfg.flow.shift, rung.solver)
        torch.testing.assert_close(streamed[n].video, z_off[0], atol=1e-5, rtol=0, msg=f"unit {n} at {rung}")
        torch.testing.assert_close(streamed[n].audio, z_off[1], atol=1e-5, rtol=0, msg=f"unit {n} at {rung}")


def test_the_ladder_runs_from_the_preset_solver_down_to_one_euler_step() -> None:
    assert quality_ladder(4, "euler") == (Rung(4), Rung(3), Rung(2), Rung(1))
    heun = quality_ladder(2, "heun")
    assert heun == (Rung(2, "heun"), Rung(2), Rung(1))
    assert [r.evaluations for r in heun] == [3, 2, 1]  # every rung cheaper than the one above
