"""The transport: packets are encoded and decoded bit for bit, the transport is picked from the
hardware (2+ GPUs: nccl, 1: ipc, none: gloo) and a GPU transport asked for on a machine
without the GPUs is refused with the fix. The CUDA transports run only on GPU machines
(marker `gpu`); on CPU their module must still import, so that a syntax or import slip shows.
A shared cache's span travels in the header alone, and a cache is shared only where one device
can hold both workers."""
from __future__ import annotations

import pytest
import torch

from model.config import tiny
from model.duplex import Latents
from model.kv_cache import KVRows, Span
from server.runtime import transport as tr
from server.runtime.transport import Packet, PacketKind, WireShapes, decode, encode, pick_transport


def _roundtrip(p: Packet, shapes: WireShapes) -> Packet:
    header, payload = encode(p)
    h = header.tolist()
    assert (payload is None) == (tr.payload_shape(h, shapes) is None)
    if payload is not None:
        payload = payload.clone().view(tr.payload_shape(h, shapes))  # as received into a buffer
    return decode(h, payload, shapes)


def test_packets_survive_encode_and_decode_bit_for_bit() -> None:
    cfg = tiny()
    shapes = WireShapes.of(cfg, batch=3)  # a pair of 3 session slots
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(shapes.rows_shape(7)[1:], generator=g) for _ in range(2))
    rows = _roundtrip(Packet(PacketKind.ROWS, session=3, unit=5, rows=KVRows(40, k, v)), shapes)
    assert (rows.kind, rows.session, rows.unit, rows.rows.start) == (PacketKind.ROWS, 3, 5, 40)
    assert torch.equal(rows.rows.k, k) and torch.equal(rows.rows.v, v)
    assert rows.nbytes == tr.HEADER * 8 + 2 * k.nbytes and rows.seconds >= 0
    z = Latents(torch.randn(3, *shapes.resp_video, generator=g), torch.randn(3, *shapes.resp_audio, generator=g))
    lat = _roundtrip(Packet(PacketKind.LATENTS, session=3, unit=5, latents=z), shapes)
    assert torch.equal(lat.latents.video, z.video) and torch.equal(lat.latents.audio, z.audio)
    opened = _roundtrip(Packet(PacketKind.OPEN, session=4, seed=11, rows=KVRows(0, k, v)), shapes)
    assert (opened.kind, opened.seed) == (PacketKind.OPEN, 11)
    one = KVRows(0, k[:, 1:2], v[:, 1:2])  # a join: one slot's rows
    joined = _roundtrip(Packet(PacketKind.JOIN, session=1, unit=9, seed=12, rows=one), shapes)
    assert (joined.kind, joined.session, joined.unit, joined.seed) == (PacketKind.JOIN, 1, 9, 12)
    assert torch.equal(joined.rows.k, one.k) and torch.equal(joined.rows.v, one.v)
    assert _roundtrip(Packet(PacketKind.STOP, session=0), shapes).kind is PacketKind.STOP
    # on a shared cache the rows stay put: a span of them travels in the header alone
    span = _roundtrip(Packet(PacketKind.ROWS, session=0, unit=6, rows=Span(40, 47), rung=1), shapes)
    assert (span.rows, span.rung, span.nbytes) == (Span(40, 47), 1, tr.HEADER * 8)
    assert _roundtrip(Packet(PacketKind.JOIN, session=2, unit=9, rows=Span(0, 12)), shapes).rows == Span(0, 12)


@pytest.mark.parametrize("transport, asked, shared", [("ipc", None, True), ("gloo", None, False),
                                                      ("nccl", None, False), ("gloo", True, True),
                                                      ("ipc", False, False)])
def test_one_cache_is_shared_where_one_device_holds_both_workers(transport: str, asked: bool | None,
                                                                  shared: bool) -> None:
    assert tr.pick_shared_cache(transport, asked) is shared


def test_a_shared_cache_across_two_gpus_is_refused() -> None:
    with pytest.raises(ValueError, match="needs both workers on one device"):
        tr.pick_shared_cache("nccl", True)


@pytest.mark.parametrize("gpus, auto", [(0, "gloo"), (1, "ipc"), (2, "nccl"), (8, "nccl")])
def test_auto_picks_the_transport_from_the_gpu_count(monkeypatch: pytest.MonkeyPatch, gpus: int,
                                                     auto: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    assert pick_transport("auto") == auto
    assert pick_transport("gloo") == "gloo"


def test_a_gpu_transport_without_the_gpus_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="'nccl' needs 2 CUDA GPU\\(s\\), found 1; use --transport gloo"):
        pick_transport("nccl")
    with pytest.raises(ValueError, match="not one of"):
        pick_transport("tcp")


def test_cuda_transports_import_on_a_machine_without_cuda() -> None:
    from server.runtime.transport_cuda import IpcTransport, NcclTransport
    assert issubclass(IpcTransport, tr.Transport) and issubclass(NcclTransport, tr.Transport)
    assert (IpcTransport.name, NcclTransport.name) == ("ipc", "nccl")
