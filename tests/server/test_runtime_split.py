"""Two processes == one process: the thinker-performer split (over gloo, and the two cores
wired in-process) gives bit-identical text, latents, frames and audio to the single-process
streaming path with the same weights, character, input stream and noise seeds."""
from __future__ import annotations

from collections import deque
from typing import Iterator

import pytest
import torch

from model.config import PAD, ModelConfig
from model.duplex import build_model
from model.kv_cache import KVRows, Span
from model.streaming import Streamer
from server.runtime.performer import Performer, unit_noise
from server.runtime.reference import run_single
from server.runtime.supervisor import Supervisor
from server.runtime.synthetic import synthetic_character, synthetic_unit
from server.runtime.thinker import Decoded, Thinker
from server.runtime.timings import DOWN, PERFORMER, THINKER, UP, RunStats
from server.runtime.transport import HEADER, WireShapes
from tests.server.pair_helpers import TINY, run_units, start_session

UNITS = 24  # > window_units of tiny (3): the ring of the KV cache wraps many times
SEED = 7
TYPED = {5: "Hé".encode(), 6: b"llo!"}  # typed text: 7 bytes fill the 3 slots of units 5, 6, 7


@pytest.fixture(scope="module")
def reference(tiny_cfg: ModelConfig) -> list[Decoded]:
    """The single-process path, one thread like each worker (a thread count can change sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        streamer = Streamer(build_model(tiny_cfg, seed=0))
        inputs = (tuple(map(torch.from_numpy, synthetic_unit(tiny_cfg, 0, n))) for n in range(UNITS))
        return run_single(streamer, synthetic_character(tiny_cfg), SEED, inputs, TYPED)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.timeout(60)
def test_split_equals_single_process_bit_for_bit(supervisor: Supervisor, tiny_cfg: ModelConfig,
                                                 reference: list[Decoded]) -> None:
    session = start_session(supervisor, tiny_cfg, seed=SEED)
    outputs, end = run_units(session, tiny_cfg, UNITS, typed=TYPED)
    assert end.ok, end.reason
    assert [o.unit for o in outputs] == list(range(UNITS))
    assert set(outputs[1].stages) == {"encode", "language", "kv_update", "transfer", "decode"}
    for out, ref in zip(outputs, reference):
        where = f"unit {out.unit}"
        assert torch.equal(torch.from_numpy(out.text), ref.text[0]), where
        assert torch.equal(torch.from_numpy(out.z_video), ref.z.video[0]), where
        assert torch.equal(torch.from_numpy(out.z_audio), ref.z.audio[0]), where
        assert torch.equal(torch.from_numpy(out.frames), ref.frames[0]), where
        assert torch.equal(torch.from_numpy(out.audio), ref.audio[0]), where
    # the typed bytes entered the text stream in order, PAD after the last
    typed = torch.cat([torch.from_numpy(outputs[n].text) for n in (5, 6, 7)]).tolist()
    assert typed == list("Héllo!".encode()) + [PAD, PAD]
    # a sanity check of the check: the units differ from each other
    assert not torch.equal(reference[0].frames, reference[1].frames)


@pytest.mark.timeout(90)
def test_split_on_one_shared_cache_equals_single_process_bit_for_bit(tiny_cfg: ModelConfig,
                                                                     reference: list[Decoded]) -> None:
    """Both workers step on the thinker's KV cache (this machine's shared memory here, one GPU's
    memory through CUDA IPC on `ipc`): the rows never travel, only a header announcing them."""
    stats = RunStats()
    cfg = TINY.model_copy(update={"shared_cache": True, "max_lag_units": 64, "output_queue": 64})
    with Supervisor(cfg, sink=stats) as sup:
        outputs, end = run_units(start_session(sup, tiny_cfg, seed=SEED), tiny_cfg, UNITS, typed=TYPED)
    assert end.ok, end.reason
    assert [o.unit for o in outputs] == list(range(UNITS))
    for out, ref in zip(outputs, reference):
        where = f"unit {out.unit}"
        assert torch.equal(torch.from_numpy(out.text), ref.text[0]), where
        assert torch.equal(torch.from_numpy(out.z_audio), ref.z.audio[0]), where
        assert torch.equal(torch.from_numpy(out.frames), ref.frames[0]), where
        assert torch.equal(torch.from_numpy(out.audio), ref.audio[0]), where
    assert {r.transfers[DOWN].nbytes for r in stats.records} == {HEADER * 8}


def _in_process_pair(cfg: ModelConfig, arrival: str, sessions: int = 1, shared: bool = False) -> Iterator[Decoded]:
    """Thinker and Performer cores wired by a FIFO. `ahead`: every input unit arrives before
    any latents come back (the thinker's pending queue and its commit -> next -> decode order);
    `lockstep`: one unit in flight at a time. The last of `sessions` sessions is returned: each
    worker keeps its one KV cache for all of them. `shared`: the performer holds the thinker's
    cache (spans announced, no rows shipped)."""
    streamer = Streamer(build_model(cfg, seed=0))
    rows_fifo: deque[tuple[int, KVRows | Span]] = deque()
    decoded: list[Decoded] = []
    cache = streamer.new_cache() if shared else None
    performer = Performer(streamer, shared=cache)
    thinker = Thinker(streamer, ship=lambda n, rows, rung: rows_fifo.append((n, rows)), emit=decoded.append,
                      max_pending=UNITS, joined=lambda slot, seed, tick, rows, fresh: performer.open(seed, rows),
                      shared=cache)
    first_cache = thinker.state.cache
    for _ in range(sessions - 1):  # earlier sessions, on other input, leave their rows behind
        thinker.join(0, synthetic_character(cfg), SEED + 1)
        for n in range(UNITS // 2):
            thinker.on_unit(n, *map(torch.from_numpy, synthetic_unit(cfg, 1, n)))
            thinker.on_latents(n, performer.on_rows(rows_fifo.popleft()[1]).z)
        thinker.leave(0)
    thinker.join(0, synthetic_character(cfg), SEED)
    assert thinker.state.cache is first_cache
    decoded.clear()
    units = [tuple(map(torch.from_numpy, synthetic_unit(cfg, 0, n))) for n in range(UNITS)]
    if arrival == "ahead":
        for n, (frames, audio) in enumerate(units):
            thinker.on_unit(n, frames, audio, [TYPED.get(n, b"")])
    for n in range(UNITS):
        if arrival == "lockstep":
            thinker.on_unit(n, *units[n], [TYPED.get(n, b"")])
        sent, rows = rows_fifo.popleft()
        solved = performer.on_rows(rows)
        assert sent == solved.unit == n and set(solved.stages) == {"kv_update", "solve"}
        thinker.on_latents(n, solved.z)
    assert thinker.idle and not rows_fifo
    # timings are held for units in flight only: the last commit's, which no unit takes
    assert len(thinker.timer) <= 1 and len(performer.timer) == 0
    yield from decoded


@pytest.mark.parametrize("arrival, sessions, shared", [("ahead", 1, False), ("lockstep", 1, False),
                                                       ("lockstep", 2, False), ("ahead", 1, True),
                                                       ("lockstep", 2, True)])
def test_in_process_cores_equal_single_process_bit_for_bit(tiny_cfg: ModelConfig, arrival: str, sessions: int,
                                                            shared: bool, reference: list[Decoded]) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = list(_in_process_pair(tiny_cfg, arrival, sessions, shared))
    finally:
        torch.set_num_threads(threads)
    assert [d.unit for d in got] == list(range(UNITS))
    assert [set(d.stages) for d in got[:2]] == [{"encode", "language", "decode"},
                                                 {"kv_update", "encode", "language", "decode"}]
    for d, ref in zip(got, reference):
        for a, b in ((d.text, ref.text), (d.z.video, ref.z.video), (d.z.audio, ref.z.audio),
                     (d.frames, ref.frames), (d.audio, ref.audio)):
            assert torch.equal(a, b), f"unit {d.unit}"


def test_noise_depends_on_both_the_session_seed_and_the_unit(tiny_cfg: ModelConfig) -> None:
    streamer = Streamer(build_model(tiny_cfg, seed=0))
    base = unit_noise(streamer, SEED, 3).video
    assert torch.equal(base, unit_noise(streamer, SEED, 3).video)
    assert not torch.equal(base, unit_noise(streamer, SEED + 1, 3).video)
    assert not torch.equal(base, unit_noise(streamer, SEED, 4).video)


def test_performer_rejects_rows_that_skip_a_unit(tiny_cfg: ModelConfig) -> None:
    streamer = Streamer(build_model(tiny_cfg, seed=0))
    shipped: list[KVRows] = []
    performer = Performer(streamer)
    thinker = Thinker(streamer, ship=lambda n, rows, rung: shipped.append(rows), emit=lambda d: None,
                      joined=lambda slot, seed, tick, rows, fresh: performer.open(seed, rows))
    thinker.join(0, synthetic_character(tiny_cfg), SEED)
    thinker.on_unit(0, *map(torch.from_numpy, synthetic_unit(tiny_cfg, 0, 0)))
    rows = shipped[0]
    late = KVRows(rows.start + tiny_cfg.layout.unit, rows.k, rows.v)  # as if unit 1's, unit 0 lost
    with pytest.raises(ValueError, match="not resp_\\(n-1\\), obs_n, text_n"):
        performer.on_rows(late)


@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport, gpus", [("ipc", 1), ("nccl", 2)])
def test_split_over_cuda_transports_equals_single_process(tiny_cfg: ModelConfig, transport: str,
                                                         gpus: int) -> None:
    """Not run on CPU machines. On GPU the reference runs on cuda:0 in this process; the
    tolerance allows kernels chosen per process to sum in another order (fp32)."""
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"{transport} needs {gpus} CUDA GPU(s), found {torch.cuda.device_count()}")
    streamer = Streamer(build_model(tiny_cfg, seed=0, device="cuda"))
    units = [tuple(torch.from_numpy(x).cuda() for x in synthetic_unit(tiny_cfg, 0, n)) for n in range(UNITS)]
    reference = run_single(streamer, synthetic_character(tiny_cfg), SEED, units)
    with Supervisor(TINY.model_copy(update={"transport": transport, "max_lag_units": 64,
                                            "output_queue": 64})) as sup:
        outputs, end = run_units(start_session(sup, tiny_cfg, seed=SEED), tiny_cfg, UNITS)
    assert end.ok, end.reason
    for out, ref in zip(outputs, reference):
        assert torch.equal(torch.from_numpy(out.text), ref.text[0].cpu()), f"unit {out.unit}"
        diff = (torch.from_numpy(out.frames).int() - ref.frames[0].cpu().int()).abs().max()
        assert diff <= 1, f"unit {out.unit}: frames differ by {diff} levels"


@pytest.mark.timeout(60)
def test_both_roles_stage_timings_and_transfers_reach_one_record_per_unit(
        supervisor: Supervisor, tiny_cfg: ModelConfig) -> None:
    stats = RunStats()
    supervisor.sink = stats
    try:
        _, end = run_units(start_session(supervisor, tiny_cfg), tiny_cfg, 5)
    finally:
        supervisor.sink = None
    assert end.ok, end.reason
    records = sorted(stats.records, key=lambda r: r.unit)
    assert [r.unit for r in records] == list(range(5))
    r = records[1]
    assert set(r.stages[THINKER]) == {"encode", "language", "kv_update", "transfer", "decode"}
    assert set(r.stages[PERFORMER]) == {"kv_update", "solve", "transfer"}
    t, lay, shapes = tiny_cfg.transformer, tiny_cfg.layout, WireShapes.of(tiny_cfg)
    header = HEADER * 8
    assert r.transfers[DOWN].nbytes == header + 2 * t.n_layers * t.n_kv_heads * lay.unit * t.head_dim * 4
    assert r.transfers[UP].nbytes == header + shapes.latents_numel() * 4
    # signal to signal spans the thinker's front, the solve and the decode of the same unit
    front = r.stages[THINKER]["encode"] + r.stages[THINKER]["language"]
    assert r.signal_to_signal > front + r.stages[PERFORMER]["solve"] + r.stages[THINKER]["decode"]


def test_a_performer_and_its_thinker_must_agree_on_sharing_the_cache(tiny_cfg: ModelConfig) -> None:
    streamer = Streamer(build_model(tiny_cfg, seed=0))
    sinks = streamer.lay.sinks
    with pytest.raises(ValueError, match="must agree on whether the cache is shared"):
        Performer(streamer).open(0, Span(0, sinks))
    rows = streamer.new_cache().rows(0, 0)
    with pytest.raises(ValueError, match="must agree on whether the cache is shared"):
        Performer(streamer, shared=streamer.new_cache()).open(0, rows)
