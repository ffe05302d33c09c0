"""The GPU transports: `nccl` (two GPUs) and `ipc` (one GPU shared by both workers).

Neither has run yet: this project's CI and development machine have no GPU. They implement the
same `Transport` contract as gloo (transport.py), which the CPU tests check; what is specific
to CUDA is written out below with the reason for each step, so that the first run on a GPU
machine has something precise to confirm or correct.

nccl: two NCCL communicators, one per direction, so a receive waiting for the next unit's rows
never sits in front of a send of latents on the same NCCL stream (NCCL runs a communicator's
ops in order on one stream). Headers travel on a gloo group (CPU tensors: reading a shape
never synchronises the GPU). The receiving thread enqueues on its own stream, so the compute
stream never waits for a transfer it did not ask for; sends wait for the compute stream.

ipc: both processes share one GPU; NCCL cannot put two ranks on one device. Each side
allocates an inbox buffer at the largest message it will receive and shares it with its peer
over a pipe (torch.multiprocessing pickles a CUDA tensor as an IPC handle), together with an
interprocess event. A send copies into the peer's inbox on a copy stream, records the event
and sends the header down the pipe; the receiver waits on the event on its own stream, copies
out, and acks so the sender may reuse the inbox. With one shared KV cache (the default on ipc,
worker.py) no rows use the performer's inbox (it then holds one element): the thinker's header
names the rows it wrote in the cache both hold, after its stream has finished writing them;
latents still come up this way.
"""
from __future__ import annotations

import os
import threading
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from server.runtime.transport import (HEADER, IDLE_TIMEOUT, Packet, Transport, WireShapes,
                                      decode, encode, payload_shape)


class NcclTransport(Transport):
    name = "nccl"

    def __init__(self, rank: int, store_path: str, shapes: WireShapes):
        self.rank, self.peer, self.shapes = rank, 1 - rank, shapes
        self.device = torch.device("cuda", rank)
        torch.cuda.set_device(self.device)
        store = dist.FileStore(store_path, 2)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")  # NCCL's bootstrap: loopback only
        dist.init_process_group("nccl", store=store, rank=rank, world_size=2, timeout=IDLE_TIMEOUT,
                                device_id=self.device)
        down = dist.new_group([0, 1], backend="nccl", timeout=IDLE_TIMEOUT)  # KV rows
        up = dist.new_group([0, 1], backend="nccl", timeout=IDLE_TIMEOUT)  # latents
        self._tx, self._rx = (down, up) if rank == 0 else (up, down)
        self._headers = dist.new_group([0, 1], backend="gloo", timeout=IDLE_TIMEOUT)
        self._tx_stream = torch.cuda.Stream(self.device)
        self._rx_stream = torch.cuda.Stream(self.device)

    def send(self, packet: Packet) -> None:
        header, payload = encode(packet)
        dist.send(header, dst=self.peer, group=self._headers, tag=self.rank)
        if payload is None:
            return
        self._tx_stream.wait_stream(torch.cuda.current_stream(self.device))  # payload is computed
        with torch.cuda.stream(self._tx_stream):
            dist.send(payload.contiguous(), dst=self.peer, group=self._tx)

    def recv(self) -> Packet:
        header = torch.empty(HEADER, dtype=torch.int64)
        dist.recv(header, src=self.peer, group=self._headers, tag=self.peer)
        h = header.tolist()
        shape = payload_shape(h, self.shapes)
        payload = None
        if shape is not None:
            payload = torch.empty(shape, dtype=self.shapes.dtype, device=self.device)
            with torch.cuda.stream(self._rx_stream):
                dist.recv(payload, src=self.peer, group=self._rx)
            self._rx_stream.synchronize()  # this thread only: the payload is complete when handed on
        return decode(h, payload, self.shapes)

    def close(self) -> None:
        dist.destroy_process_group()


class IpcTransport(Transport):
    name = "ipc"

    def __init__(self, rank: int, side: Connection, shapes: WireShapes, max_rows: int):
        self.shapes, self.side = shapes, side
        self.device = torch.device("cuda", 0)
        torch.cuda.set_device(self.device)
        # 1. my inbox: rows for the performer, latents for the thinker
        numel = (torch.Size(shapes.rows_shape(max_rows)).numel() if rank == 1
                 else shapes.latents_numel())
        self._inbox = torch.empty(max(numel, 1), dtype=shapes.dtype, device=self.device)  # never empty: shared by IPC
        self._sent = torch.cuda.Event(interprocess=True)  # recorded after each copy I send
        # 2. swap inbox and event handles with the peer (CUDA IPC through the pipe)
        side.send((self._inbox, self._sent.ipc_handle()))
        self._peer_inbox, handle = side.recv()
        self._peer_sent = torch.cuda.Event.from_ipc_handle(self.device, handle)
        self._tx_stream = torch.cuda.Stream(self.device)
        self._rx_stream = torch.cuda.Stream(self.device)
        self._inbox_free = threading.Semaphore(1)  # the peer has copied my last payload out
        self._pipe_lock = threading.Lock()  # headers (sender thread) and acks (receiver thread)

    def send(self, packet: Packet) -> None:
        header, payload = encode(packet)
        if payload is not None:
            if payload.numel() > self._peer_inbox.numel():
                raise ValueError(f"ipc payload of {payload.numel()} elements exceeds the peer's inbox "
                                 f"({self._peer_inbox.numel()}); raise max_rows for this preset")
            self._inbox_free.acquire()
            self._tx_stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._tx_stream):
                self._peer_inbox[:payload.numel()].copy_(payload.reshape(-1), non_blocking=True)
                self._sent.record(self._tx_stream)
        with self._pipe_lock:
            self.side.send(("packet", header.tolist()))

    def recv(self) -> Packet:
        while True:
            what, body = self.side.recv()
            if what == "ack":
                self._inbox_free.release()
                continue
            shape = payload_shape(body, self.shapes)
            payload = None
            if shape is not None:
                with torch.cuda.stream(self._rx_stream):
                    self._rx_stream.wait_event(self._peer_sent)
                    payload = self._inbox[:torch.Size(shape).numel()].clone().view(shape)
                self._rx_stream.synchronize()
                with self._pipe_lock:
                    self.side.send(("ack", None))
            return decode(body, payload, self.shapes)

    def close(self) -> None:
        self.side.close()
