"""CUDA graphs of the per-unit steps (model/unit_graphs.py) never change what the model says.

CPU: with `cuda_graphs=True` every step runs eager, bit for bit the plain Streamer's. The
replay bookkeeping (static input buffers refreshed every step, the steady-state rule, one graph
per chunk shape, a failed capture falling back to eager) runs on CPU too, with a stand-in for
the CUDA graph that re-runs the captured forward from the static buffers on each replay.
GPU (`gpu` marker): real graphs equal eager within bf16 tolerance, and replays are used.
"""
from __future__ import annotations

import logging
from typing import Callable

import pytest
import torch
from torch import Tensor

from model import unit_graphs
from model.config import ModelConfig, tiny
from model.duplex import DuplexModel, build_model
from model.kv_cache import KVCache
from model.streaming import Character, Streamer
from tests.model.synthetic import make_character

WINDOW, UNITS = 2, 4  # units 0..1 fill the ring, units 2..3 run in steady state


def run_session(s: Streamer, character: Character, units: int, cache: KVCache | None = None) -> list[Tensor]:
    """Every step of `units` units (seeded inputs, text and noise); what each step returned.
    `cache`: an earlier one, reset and reused (as a worker reuses its one cache)."""
    cfg, dev, dt = s.model.cfg, s.model.text_head.weight.device, s.model.text_head.weight.dtype
    g = torch.Generator().manual_seed(2)
    spf = cfg.audio.samples_per_unit
    frames = torch.rand(1, 4 * units, 3, cfg.video.height, cfg.video.width, generator=g) * 2 - 1
    audio = torch.rand(1, units * spf, generator=g) * 2 - 1
    text = torch.randint(0, 256, (1, units, cfg.text_slots), generator=g).to(dev)
    st = s.new_state(cache=cache)
    s.prefill(st, character)
    out = []
    for n in range(units):
        s.observe(st, frames[:, 4 * n:4 * n + 4].to(dev, dt), audio[:, n * spf:(n + 1) * spf].to(dev, dt))
        _, logits = s.speak(st, forced=text[:, n])
        z = s.denoise(st.cache, n, s.sample_noise(1, torch.Generator(dev).manual_seed(n)))
        s.commit(st, z)
        out += [logits, *z, *s.decode(st, z)]
    return out + [st.cache.k, st.cache.v]


def steady_steps(cfg: ModelConfig, units: int) -> int:
    """Chunk forwards that see the whole cache: the resp chunks (solver steps + commit) of unit
    W - 1, then every chunk (obs, k text slots, solver steps, commit) of units W, W + 1, ..."""
    resp_steps = cfg.flow.steps + 1
    return resp_steps + (units - cfg.window_units) * (1 + cfg.text_slots + resp_steps)


def chunk_shapes(cfg: ModelConfig) -> int:
    lay = cfg.layout
    return len({lay.obs, 1, lay.resp})


class RerunGraph:
    """A CPU stand-in for CudaGraph: `replay` re-runs the captured forward, which reads only the
    static buffers, into one output buffer, as a graph does."""

    @staticmethod
    def supports(device: torch.device) -> bool:
        return True

    @staticmethod
    def new_pool() -> None:
        return None

    def __init__(self, run: Callable[[], Tensor], pool: None):
        self.run = run
        self.out = run()

    def replay(self) -> Tensor:
        return self.out.copy_(self.run())


class FailingGraph(RerunGraph):
    attempts = 0

    def __init__(self, run: Callable[[], Tensor], pool: None):
        type(self).attempts += 1
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny().model_copy(update={"window_units": WINDOW})


@pytest.fixture
def eager(model: DuplexModel, character: Character) -> list[Tensor]:
    return run_session(Streamer(model), character, UNITS)


def test_on_cpu_graphs_are_not_used_and_outputs_are_bit_identical(
        model: DuplexModel, character: Character, eager: list[Tensor]) -> None:
    s = Streamer(model, cuda_graphs=True)
    got = run_session(s, character, UNITS)
    assert (s.graphs.captures, s.graphs.replays) == (0, 0)
    assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True))


def test_replays_from_static_buffers_equal_eager_bit_for_bit(
        cfg: ModelConfig, model: DuplexModel, character: Character, eager: list[Tensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sessions, each on a new cache: the graphs are captured again for the second."""
    monkeypatch.setattr(unit_graphs, "CudaGraph", RerunGraph)
    s = Streamer(model, cuda_graphs=True)
    for session in (1, 2):
        got = run_session(s, character, UNITS)
        assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True)), f"session {session}"
        assert s.graphs.captures == session * chunk_shapes(cfg)
        assert s.graphs.replays == session * steady_steps(cfg, UNITS)


def test_graphs_captured_at_warm_up_serve_every_later_step_of_the_cache(
        cfg: ModelConfig, model: DuplexModel, character: Character, eager: list[Tensor],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's start: every steady-state shape captured on its cache before any session
    (a batch also masked: a slot joining on its own); its sessions then capture nothing."""
    monkeypatch.setattr(unit_graphs, "CudaGraph", RerunGraph)
    s = Streamer(model, cuda_graphs=True)
    cache = s.new_cache()
    s.warm_up_graphs(cache)
    assert s.graphs.captures == chunk_shapes(cfg)
    assert cache.length == 0 and not cache.written.any() and not cache.k.any(), "the cache is reset"
    warm = s.graphs.replays
    got = run_session(s, character, UNITS, cache)
    assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True))
    assert s.graphs.captures == chunk_shapes(cfg), "no capture while serving"
    assert s.graphs.replays - warm == steady_steps(cfg, UNITS)
    s.warm_up_graphs(s.new_cache(batch=2), media=False)  # a performer's batch: resp, both variants
    assert s.graphs.captures == chunk_shapes(cfg) + 2


def test_a_failed_capture_is_logged_once_and_the_steps_run_eager(
        cfg: ModelConfig, model: DuplexModel, character: Character, eager: list[Tensor],
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(unit_graphs, "CudaGraph", FailingGraph)
    FailingGraph.attempts = 0
    s = Streamer(model, cuda_graphs=True)
    with caplog.at_level(logging.WARNING, logger="model.unit_graphs"):
        got = run_session(s, character, UNITS)
    assert all(torch.equal(a, b) for a, b in zip(got, eager, strict=True))
    assert (s.graphs.captures, s.graphs.replays) == (0, 0)
    assert FailingGraph.attempts == chunk_shapes(cfg)
    failures = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(failures) == chunk_shapes(cfg) and "not permitted" in caplog.text


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "sdpa", "triton"])
def test_captured_steps_on_cuda_equal_eager_within_bf16_tolerance(cfg: ModelConfig, backend: str) -> None:
    net = build_model(cfg, seed=0, device="cuda", dtype=torch.bfloat16)
    net.transformer.backend = backend
    character = make_character(cfg)
    want = run_session(Streamer(net), character, UNITS)
    s = Streamer(net, cuda_graphs=True)
    got = run_session(s, character, UNITS)
    assert s.graphs.captures == chunk_shapes(cfg)
    assert s.graphs.replays == steady_steps(cfg, UNITS)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a.float(), b.float(), atol=1.6e-2, rtol=1.6e-2,
                                   msg=lambda m: f"output {i}: {m}")
