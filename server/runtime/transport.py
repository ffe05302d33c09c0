"""Tensor transport between the thinker (rank 0) and the performer (rank 1): one interface,
three implementations picked from the hardware.

  gloo  CPU: torch.distributed over loopback TCP (this file); what CI tests.
  nccl  two GPUs: torch.distributed NCCL, copies on their own CUDA stream (transport_cuda.py).
  ipc   one GPU shared by both processes: CUDA IPC buffers + events (transport_cuda.py);
        NCCL cannot put two ranks on one GPU.

A message is a `Packet`: a fixed 9-int64 header, then at most one payload tensor whose shape
follows from the header and the model's static shapes (`WireShapes`), so nothing else is
negotiated. Where the performer shares the thinker's cache (model/kv_cache.py), OPEN, JOIN and
ROWS carry a `Span` of rows in the header and no payload. Every packet but JOIN carries the pair's whole batch of slots. Down: OPEN (the
pair starts afresh: every slot's prefill sinks), JOIN (a session joins in slot `session` at
tick `unit`: that slot's sinks) and ROWS (the new rows of a tick: resp_{n-1}, obs_n, text_n of
all layers); up: LATENTS (z_n). STOP ends the receiving thread at shutdown.
The header carries the sender's `time.monotonic_ns()`, so the receiver measures the transfer.
No processes are started here, and no liveness is judged: that is the supervisor's job.
"""
from __future__ import annotations

import datetime
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist
from torch import Tensor

from model.config import ModelConfig
from model.duplex import Latents
from model.kv_cache import KVRows, Span

TRANSPORTS = ("gloo", "nccl", "ipc")
HEADER = 9  # int64s: kind, session, unit, seed, start, n_rows, sent_ns, rung, payload (0 or 1)
# Liveness is judged by the supervisor's heartbeats, not by the transport: a receive may wait
# through an idle gap between sessions (gloo closes the pair when an op outlives its timeout).
IDLE_TIMEOUT = datetime.timedelta(days=7)


class PacketKind(IntEnum):
    OPEN = 1
    ROWS = 2
    LATENTS = 3
    JOIN = 4
    STOP = 5


@dataclass
class Packet:
    kind: PacketKind
    session: int  # JOIN: the slot
    unit: int = 0  # ROWS, LATENTS: the tick; JOIN: the session's first tick
    seed: int = 0  # OPEN, JOIN: the session's noise seed
    rung: int = 0  # ROWS only: the quality ladder's rung to solve the unit at
    rows: KVRows | Span | None = None  # OPEN, JOIN, ROWS: the rows, or a Span of a shared cache
    latents: Latents | None = None  # LATENTS
    sent_ns: int = 0  # filled by send()
    nbytes: int = 0  # header + payload, filled by send() and recv()
    recv_ns: int = 0  # filled by recv()

    @property
    def seconds(self) -> float:
        """Send start -> payload received, on the shared monotonic clock."""
        return (self.recv_ns - self.sent_ns) * 1e-9


@dataclass(frozen=True)
class WireShapes:
    """The static shapes both ends derive from the model config; only n_rows varies."""
    layers: int
    batch: int
    kv_heads: int
    head_dim: int
    resp_video: tuple[int, int]  # (tokens, channels)
    resp_audio: tuple[int, int]
    dtype: torch.dtype

    @classmethod
    def of(cls, cfg: ModelConfig, dtype: torch.dtype = torch.float32, batch: int = 1) -> "WireShapes":
        t, lay = cfg.transformer, cfg.layout
        return cls(t.n_layers, batch, t.n_kv_heads, t.head_dim, (lay.resp_video, lay.video_token_dim),
                   (lay.resp_audio, lay.audio_token_dim), dtype)

    def rows_shape(self, n: int, batch: int | None = None) -> tuple[int, ...]:
        """k and v stacked, of `batch` slots (default: all)."""
        return (2, self.layers, self.batch if batch is None else batch, self.kv_heads, n, self.head_dim)

    def latents_numel(self) -> int:
        return self.batch * (self.resp_video[0] * self.resp_video[1] + self.resp_audio[0] * self.resp_audio[1])


def encode(p: Packet) -> tuple[Tensor, Tensor | None]:
    """Packet -> (header int64 (HEADER,), payload or None); stamps p.sent_ns."""
    payload, start, n = None, 0, 0
    if isinstance(p.rows, Span):
        start, n = p.rows.start, p.rows.end - p.rows.start
    elif p.rows is not None:
        payload, start, n = torch.stack([p.rows.k, p.rows.v]), p.rows.start, p.rows.k.shape[3]
    elif p.latents is not None:
        payload = torch.cat([p.latents.video.reshape(-1), p.latents.audio.reshape(-1)])
    p.sent_ns = time.monotonic_ns()
    header = torch.tensor([int(p.kind), p.session, p.unit, p.seed, start, n, p.sent_ns, p.rung,
                           int(payload is not None)], dtype=torch.int64)
    p.nbytes = header.nbytes + (payload.nbytes if payload is not None else 0)
    return header, payload


def payload_shape(header: list[int], shapes: WireShapes) -> tuple[int, ...] | None:
    kind = PacketKind(header[0])
    if not header[8]:
        return None
    if kind in (PacketKind.OPEN, PacketKind.ROWS):
        return shapes.rows_shape(header[5])
    if kind is PacketKind.JOIN:
        return shapes.rows_shape(header[5], batch=1)
    if kind is PacketKind.LATENTS:
        return (shapes.latents_numel(),)
    return None


def decode(header: list[int], payload: Tensor | None, shapes: WireShapes) -> Packet:
    """The inverse of `encode`, on the receiving side (payload already on the local device)."""
    kind = PacketKind(header[0])
    p = Packet(kind, session=header[1], unit=header[2], seed=header[3], rung=header[7],
               sent_ns=header[6], recv_ns=time.monotonic_ns(), nbytes=HEADER * 8)
    if payload is None:
        if kind in (PacketKind.OPEN, PacketKind.JOIN, PacketKind.ROWS):
            p.rows = Span(header[4], header[4] + header[5])
        return p
    p.nbytes += payload.nbytes
    if kind is PacketKind.LATENTS:
        (rv, cv), (ra, ca), B = shapes.resp_video, shapes.resp_audio, shapes.batch
        video, audio = payload.split([B * rv * cv, B * ra * ca])
        p.latents = Latents(video.view(B, rv, cv), audio.view(B, ra, ca))
    else:
        p.rows = KVRows(start=header[4], k=payload[0], v=payload[1])
    return p


class Transport(ABC):
    """One end of the pair's tensor channel. send() and recv() may run on different threads."""
    name: str

    @abstractmethod
    def send(self, packet: Packet) -> None:
        """Send a packet to the peer (blocks until the payload is handed to the wire)."""

    @abstractmethod
    def recv(self) -> Packet:
        """Block until the peer's next packet has fully arrived."""

    @abstractmethod
    def close(self) -> None:
        """Release the channel; call after both directions have exchanged STOP."""


class GlooTransport(Transport):
    """torch.distributed gloo over loopback TCP; the pair's FileStore does the rendezvous."""
    name = "gloo"

    def __init__(self, rank: int, store_path: str, shapes: WireShapes):
        self.rank, self.peer, self.shapes = rank, 1 - rank, shapes
        store = dist.FileStore(store_path, 2)
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's pair sockets on loopback, never on the LAN
        dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=IDLE_TIMEOUT)
        # One tag per direction: each direction's header and payload arrive in order.
        self._tx_tag, self._rx_tag = (1, 2) if rank == 0 else (2, 1)

    def send(self, packet: Packet) -> None:
        header, payload = encode(packet)
        dist.send(header, dst=self.peer, tag=self._tx_tag)
        if payload is not None:
            dist.send(payload.contiguous(), dst=self.peer, tag=self._tx_tag)

    def recv(self) -> Packet:
        header = torch.empty(HEADER, dtype=torch.int64)
        dist.recv(header, src=self.peer, tag=self._rx_tag)
        h = header.tolist()
        shape = payload_shape(h, self.shapes)
        payload = None
        if shape is not None:
            payload = torch.empty(shape, dtype=self.shapes.dtype)
            dist.recv(payload, src=self.peer, tag=self._rx_tag)
        return decode(h, payload, self.shapes)

    def close(self) -> None:
        dist.destroy_process_group()


def pick_transport(requested: str = "auto") -> str:
    """`auto`: 2+ GPUs -> nccl, 1 GPU -> ipc, else gloo; an explicit name is checked."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested == "auto":
        return "nccl" if gpus >= 2 else "ipc" if gpus == 1 else "gloo"
    need = {"gloo": 0, "ipc": 1, "nccl": 2}
    if requested not in need:
        raise ValueError(f"transport {requested!r} is not one of {TRANSPORTS} or 'auto'")
    if gpus < need[requested]:
        raise ValueError(f"transport {requested!r} needs {need[requested]} CUDA GPU(s), found {gpus}; "
                         f"use --transport gloo (CPU) or auto")
    return requested


def connect(name: str, rank: int, shapes: WireShapes, store_path: str,
            side: Connection | None = None, max_rows: int = 0) -> Transport:
    """Open this rank's end of the channel. gloo and nccl meet at the pair's FileStore;
    ipc swaps CUDA IPC handles over `side`, a pipe between the two workers."""
    if name == "gloo":
        return GlooTransport(rank, store_path, shapes)
    from server.runtime.transport_cuda import IpcTransport, NcclTransport  # CUDA only
    if name == "nccl":
        return NcclTransport(rank, store_path, shapes)
    if name == "ipc":
        if side is None:
            raise ValueError("the ipc transport needs the pipe between the workers (side=...)")
        return IpcTransport(rank, side, shapes, max_rows)
    raise ValueError(f"transport {name!r} is not one of {TRANSPORTS}")


def pick_shared_cache(transport: str, asked: bool | None) -> bool:
    """Whether both workers hold one KV cache (the thinker's): by default where one device holds
    both (ipc: one GPU); on gloo when asked (one machine's shared memory); never on nccl (two GPUs)."""
    if asked is None:
        return transport == "ipc"
    if asked and transport == "nccl":
        raise ValueError("a shared KV cache needs both workers on one device; nccl puts them on two GPUs")
    return asked


def worker_device(transport: str, rank: int) -> torch.device:
    """Where each rank's model lives: its own GPU (nccl), the shared GPU (ipc), or the CPU."""
    return {"gloo": torch.device("cpu"), "ipc": torch.device("cuda", 0),
            "nccl": torch.device("cuda", rank)}[transport]
