"""The compiled path (model/compiled.py) equals eager: over units through the ring wrap, to 1e-5
in fp32; its attention beside the cache equals writing the cache first; a failed compile falls
back to eager, once and loudly; a Streamer built after a checkpoint load computes with the loaded
weights. The compile itself is inductor's
C++ backend: the first run of this module compiles the tiny preset (tens of seconds on 2 cores),
later runs hit the cache.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters as dynamo_counters

import model.compiled as compiled
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import tiny
from model.duplex import DuplexModel, build_model
from model.media import frames_to_model
from model.streaming import Streamer
from tests.model.synthetic import make_character

UNITS = 6  # tiny's window is 3 units: units 3.. run compiled, 3 of them after the wrap
TOL = 1e-5


def run_units(model: DuplexModel, streamer: Streamer, units: int = UNITS) -> list[Tensor]:
    """Every output of `units` units of one session: logits, velocities, clean latents, media.
    Odd units feed forced text slots (typed text); the solve walks down the quality ladder,
    one rung a unit (the step count changes from unit to unit, as the performer's does)."""
    cfg = model.cfg
    st = streamer.new_state()
    streamer.prefill(st, make_character(cfg))
    g = torch.Generator().manual_seed(7)
    spu = cfg.audio.samples_per_unit
    # uint8 frames through the thinker's conversion: the layout the worker hands the encoder
    frames = frames_to_model(torch.randint(0, 256, (1, 4 * units, cfg.video.height, cfg.video.width, 3),
                                           generator=g, dtype=torch.uint8))
    audio = torch.rand(1, units * spu, generator=g) * 2 - 1
    outs: list[Tensor] = []
    for n in range(units):
        streamer.observe(st, frames[:, 4 * n:4 * n + 4], audio[:, n * spu:(n + 1) * spu])
        typed = torch.tensor([[72 + n, 105, 33, 10][:streamer.lay.text]]) if n % 2 else None
        tokens, logits = streamer.speak(st, forced=typed)
        v = streamer.velocity(st.cache, n, streamer.sample_noise(1, torch.Generator().manual_seed(n)),
                              torch.full((1,), 0.7))
        rung = streamer.ladder[n % len(streamer.ladder)]
        z = streamer.denoise(st.cache, n, streamer.sample_noise(1, torch.Generator().manual_seed(n)), rung)
        streamer.commit(st, z)
        video, sound = streamer.decode(st, z)
        outs += [tokens, logits, *v, *z, video, sound]
    outs += [st.cache.k, st.cache.v]
    return outs


@pytest.fixture(scope="module")
def tiny_model() -> DuplexModel:
    return build_model(tiny(), seed=0)


@pytest.mark.slow
def test_compiled_equals_eager_through_the_ring_wrap(tiny_model: DuplexModel) -> None:
    eager = run_units(tiny_model, Streamer(tiny_model))
    fast = Streamer(tiny_model, compile=True)
    fast.compiled.warm_up()
    graphs = dynamo_counters["stats"]["unique_graphs"]
    got = run_units(tiny_model, fast)
    # warm_up compiled everything a session needs: no unit of a call waits for the compiler
    # (a graph compiled mid-call stalls a step for seconds: the step watchdog restarts the pair)
    assert dynamo_counters["stats"]["unique_graphs"] == graphs, "a graph was compiled after warm_up"
    assert fast.compiled.failed == []
    steps = fast.compiled
    assert all(c.calls > 0 for c in (steps._chunk, steps._text, steps._resp, steps.encoder))  # ran compiled
    for i, (a, b) in enumerate(zip(got, eager, strict=True)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0, msg=lambda m: f"output {i}: {m}")


@pytest.mark.slow
def test_a_streamer_built_after_a_checkpoint_load_compiles_those_weights(
        tiny_model: DuplexModel, tmp_path: Path) -> None:
    # a server loads the checkpoint, then builds the Streamer and warms it up: its graphs
    # compute with the loaded weights, not with those of a model compiled before in this
    # process (tiny_model's, above) nor with what the FX graph cache holds
    loaded = load_checkpoint(save_checkpoint(build_model(tiny(), seed=1), tmp_path / "ckpt"))
    assert not torch.equal(loaded.text_head.weight, tiny_model.text_head.weight)
    fast = Streamer(loaded, compile=True)
    fast.compiled.warm_up()
    got = run_units(loaded, fast)
    assert fast.compiled.failed == []
    eager = run_units(loaded, Streamer(loaded))
    for i, (a, b) in enumerate(zip(got, eager, strict=True)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0, msg=lambda m: f"output {i}: {m}")


@pytest.mark.parametrize("window", [pytest.param(3, id="W=3,ring-wraps"), pytest.param(1, id="W=1,one-slot")])
@torch.no_grad()
def test_attention_beside_the_cache_equals_writing_it_first(window: int) -> None:
    cfg = tiny().model_copy(update={"window_units": window})
    model = build_model(cfg, seed=0)
    lay = model.layout
    s = Streamer(model)
    st = s.new_state()
    g = torch.Generator().manual_seed(1)
    st.cache.k.normal_(generator=g)
    st.cache.v.normal_(generator=g)
    tr = model.transformer
    for n in (window - 1, window, window + 1):  # the last unit before the wrap, and after it
        start = lay.sinks + n * lay.unit + lay.obs + lay.text
        x = torch.randn(1, lay.resp, cfg.transformer.dim, generator=g)
        t = torch.rand(1, 1, generator=g).expand(1, lay.resp)
        pos = s._pos(s._resp, n)
        span = st.cache.span(start, lay.resp)
        held: list[tuple[Tensor, Tensor]] = []
        kept = st.cache.k.clone()
        beside = tr(x, t, pos, cache=st.cache, span=span, held=held)
        assert torch.equal(st.cache.k, kept)  # held: the cache is only read
        written = tr(x, t, pos, cache=st.cache, span=span)
        torch.testing.assert_close(beside, written, atol=TOL, rtol=0)
        for layer, (k, v) in enumerate(held):  # the rows the caller writes: what eager wrote
            torch.testing.assert_close(st.cache.k[layer].index_select(2, span.rows), k, atol=TOL, rtol=0)
            torch.testing.assert_close(st.cache.v[layer].index_select(2, span.rows), v, atol=TOL, rtol=0)


def test_a_failed_compile_falls_back_to_eager_once(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def eager(x: Tensor) -> Tensor:
        calls.append(x)
        return x * 2

    step = compiled.Compiled("a test step", eager)

    def broken(*args: object) -> Tensor:
        raise RuntimeError("inductor: no C++ compiler")

    step._compiled = broken
    with caplog.at_level(logging.WARNING, logger="model.compiled"):
        outs = [step(torch.ones(2)) for _ in range(3)]
    assert all(torch.equal(o, torch.full((2,), 2.0)) for o in outs)
    assert step.failed and step.calls == 0 and len(calls) == 3
    warnings = [r for r in caplog.records if "a test step" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in caplog.text


@torch.no_grad()
def test_a_streamer_whose_compiles_fail_equals_eager(tiny_model: DuplexModel,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(fn: object, **kwargs: object) -> object:
        def run(*args: object, **kw: object) -> object:
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(compiled.torch, "compile", no_compiler)
    fast = Streamer(tiny_model, compile=True)
    got = run_units(tiny_model, fast, units=4)
    assert sorted(fast.compiled.failed) == sorted(["the Transformer chunk forward", "the text slots",
                                                   "the resp chunk", "the AV encoder",
                                                   "the VAE audio decoder"])
    eager = run_units(tiny_model, Streamer(tiny_model), units=4)
    for a, b in zip(got, eager, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)


def test_compile_and_cuda_graphs_are_refused_together(tiny_model: DuplexModel) -> None:
    with pytest.raises(ValueError, match="pick one"):
        Streamer(tiny_model, cuda_graphs=True, compile=True)
