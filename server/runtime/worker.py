"""The process shell around a core (thinker.py, performer.py): one worker process of the pair.

What the shell owns, and the core never sees:
  1. signals: SIGTERM only sets a flag, the loop ends between events; SIGINT is ignored (Ctrl-C
     in a terminal reaches the whole process group: the daemon drains and stops the workers)
  2. a guard thread: a heartbeat into shared memory every `heartbeat_s` (the supervisor's
     hang detector) and a watch on the parent: an orphaned worker exits at once; and the start
     of each step stamped into shared memory (the supervisor's step watchdog)
  3. the model (built or loaded), then the transport, then (`shared_cache`) the thinker's KV
     cache handed to the performer over the side pipe (torch.multiprocessing pickles a CUDA
     tensor as an IPC handle and a CPU one into shared memory); READY goes up once all are there
  4. one inbox fed by two reader threads (the control pipe, the transport), so the loop is
     event-driven and model compute never waits for a message it does not need
  5. WorkerFailed with the traceback before the process exits on any error
`worker_main` is the multiprocessing target; the supervisor starts it with the spawn context.
"""
from __future__ import annotations

import gc
import os
import queue
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Iterator

import torch

from model.attention import Backend
from model.config import preset
from model.duplex import DuplexModel, build_model
from model.kv_cache import KVCache
from model.streaming import Streamer
from server.runtime.messages import (EndSession, InputTick, Ready, Role, SessionClosed,
                                     SessionOpened, Shutdown, SolveReport, StartSession,
                                     UnitOutput, WorkerFailed)
from server.runtime.performer import Performer
from server.runtime.thinker import Decoded, Thinker
from server.runtime.timings import StageTimer
from server.runtime.transport import Packet, PacketKind, Transport, WireShapes, connect, worker_device


@dataclass(frozen=True)
class WorkerSpec:
    role: Role
    preset: str
    checkpoint: str | None  # a checkpoint folder, or None for the seeded dummy init
    weights_seed: int
    transport: str  # gloo | nccl | ipc, already picked
    store: str  # the pair's rendezvous file (gloo, nccl: torch.distributed FileStore)
    threads: int  # torch intra-op threads
    heartbeat_s: float
    max_pending: int
    slots: int  # session slots of the pair: the batch every step runs
    backend: Backend  # the model's kernels
    cuda_graphs: bool
    compile: bool
    shared_cache: bool  # one KV cache for both workers (the thinker's), rows never shipped
    test_eval_delay_s: float = 0.0  # test only: the performer sleeps this long per solver evaluation


class Shell:
    def __init__(self, spec: WorkerSpec, conn: Connection, heartbeats: Any, steps: Any):
        self.spec, self.conn, self.heartbeats, self.steps = spec, conn, heartbeats, steps
        self.stop = threading.Event()
        self.inbox: queue.Queue[Any] = queue.Queue()
        self._parent = os.getppid()
        self._send_lock = threading.Lock()
        self.transport: Transport | None = None
        self.shared: KVCache | None = None  # spec.shared_cache: the thinker's cache, both sides
        self._rx: threading.Thread | None = None

    # 1. + 2. signals and the guard thread -------------------------------------------------
    def guard(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _beat(self) -> None:
        slot = self.spec.role.rank
        while True:
            self.heartbeats[slot] = time.monotonic()
            if os.getppid() != self._parent:
                os._exit(3)  # the daemon is gone: nobody will ever read our results
            time.sleep(self.spec.heartbeat_s)

    # 3. model and transport ---------------------------------------------------------------
    def load(self, side: Connection | None) -> Streamer:
        spec = self.spec
        device = worker_device(spec.transport, spec.role.rank)
        if device.type == "cpu":
            torch.set_num_threads(spec.threads)
        model: DuplexModel
        if spec.checkpoint:
            from model.checkpoint import load_checkpoint  # safetensors only when a checkpoint is used
            # a CPU computes in float32 whatever the checkpoint stores (half precision is slow there)
            model = load_checkpoint(spec.checkpoint, device=device,
                                    dtype=torch.float32 if device.type == "cpu" else None)
        else:
            model = build_model(preset(spec.preset), seed=spec.weights_seed, device=device)
        model.transformer.backend = spec.backend
        streamer = Streamer(model, cuda_graphs=spec.cuda_graphs, compile=spec.compile)
        if streamer.compiled is not None:  # before READY: no unit of a call waits for the compiler
            streamer.compiled.warm_up(batch=spec.slots, media=spec.role is Role.THINKER)
        lay = model.layout
        shapes = WireShapes.of(model.cfg, dtype=model.text_head.weight.dtype, batch=spec.slots)
        # on a shared cache no rows travel down: the performer's ipc inbox holds none (one
        # unit's rows of 8 slots at `large` in bf16: 5.7 GB of GPU memory)
        self.transport = connect(spec.transport, spec.role.rank, shapes, spec.store, side,
                                 max_rows=0 if spec.shared_cache else max(lay.sinks, lay.unit))
        if spec.shared_cache:  # before the readers start: the ipc transport reads the side pipe then
            if side is None:
                raise ValueError("a shared KV cache needs the pipe between the workers (side=...)")
            if spec.role is Role.THINKER:
                self.shared = streamer.new_cache(spec.slots)
                side.send(self.shared)
            else:
                self.shared = side.recv()
        gc.freeze()  # the model and its modules: a full collection no longer walks them (a unit's deadline)
        self.send(Ready(spec.role, os.getpid(), str(device), self.transport.name))
        return streamer

    # 4. the inbox -------------------------------------------------------------------------
    def start_readers(self) -> None:
        threading.Thread(target=self._read_control, name="control", daemon=True).start()
        self._rx = threading.Thread(target=self._read_transport, name="transport", daemon=True)
        self._rx.start()

    def _read_control(self) -> None:
        try:
            while True:
                self.inbox.put(self.conn.recv())
        except (EOFError, OSError):
            self.inbox.put(Shutdown())  # the supervisor closed its end

    def _read_transport(self) -> None:
        assert self.transport is not None
        try:
            while True:
                packet = self.transport.recv()
                self.inbox.put(packet)
                if packet.kind is PacketKind.STOP:
                    return
        except Exception as e:  # a broken channel is this worker's failure: the loop raises it
            self.inbox.put(e)

    def events(self) -> Iterator[Any]:
        while not self.stop.is_set():
            try:
                ev = self.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(ev, Exception):
                raise ev
            if isinstance(ev, Shutdown) or (isinstance(ev, Packet) and ev.kind is PacketKind.STOP):
                return
            # a step: the watchdog's clock runs until the loop asks for the next event (a
            # prefill is bounded by the supervisor's open timeout instead)
            if not isinstance(ev, StartSession):
                self.steps[self.spec.role.rank] = time.monotonic()
            yield ev
            self.steps[self.spec.role.rank] = 0.0

    def send(self, msg: Any) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def close_transport(self) -> None:
        """Tell the peer we stop, wait (briefly) for its STOP, release the channel."""
        if self.transport is None:
            return
        self.transport.send(Packet(PacketKind.STOP, session=0))
        if self._rx is not None:
            self._rx.join(timeout=2.0)
        if self._rx is None or not self._rx.is_alive():
            self.transport.close()


# -- the two loops ----------------------------------------------------------------------------
def thinker_loop(shell: Shell, streamer: Streamer) -> None:
    transport, timer = shell.transport, StageTimer()
    assert transport is not None
    device = streamer.model.text_head.weight.device
    sessions: dict[int, int] = {}  # slot -> its session id
    first: dict[int, int] = {}  # slot -> its session's first tick
    closing: dict[int, int] = {}  # slot -> the last tick its session has a unit in
    shipped_ns: dict[int, int] = {}  # tick -> when its rows left
    latents_in: dict[int, tuple[int, float]] = {}  # tick -> (bytes, seconds) of its latents

    def finish_writes() -> None:
        """On a shared cache on a GPU, the rows announced must be there when the performer's
        stream reads them: this process's queued writes are finished first."""
        if shell.shared is not None and device.type == "cuda":
            torch.cuda.current_stream(device).synchronize()

    def ship(tick: int, rows: Any, rung: int) -> None:
        finish_writes()
        p = Packet(PacketKind.ROWS, 0, unit=tick, rows=rows, rung=rung)
        transport.send(p)
        shipped_ns[tick] = p.sent_ns

    def emit(d: Decoded) -> None:
        tick = first[d.slot] + d.unit
        media = (d.text[0], d.z.video[0], d.z.audio[0], d.frames[0], d.audio[0])
        shell.send(UnitOutput(sessions[d.slot], tick, *(t.cpu().numpy() for t in media), d.stages,
                              *latents_in[tick], shipped_ns=shipped_ns[tick], slot=d.slot))

    def joined(slot: int, seed: int, tick: int, rows: Any, fresh: bool) -> None:
        kind = PacketKind.OPEN if fresh else PacketKind.JOIN
        finish_writes()
        transport.send(Packet(kind, slot, unit=tick, seed=seed, rows=rows))
        first[slot] = tick
        shell.send(SessionOpened(sessions[slot], tick))

    thinker = Thinker(streamer, ship, emit, timer, max_pending=shell.spec.max_pending,
                      slots=shell.spec.slots, joined=joined, shared=shell.shared)
    for ev in shell.events():
        if isinstance(ev, StartSession):
            if not thinker.active:
                timer.clear()
            sessions[ev.slot] = ev.session
            thinker.join(ev.slot, ev.character.character(), ev.seed)
        elif isinstance(ev, InputTick):
            thinker.on_unit(ev.tick, torch.from_numpy(ev.frames).to(device),
                            torch.from_numpy(ev.audio).to(device), ev.texts, ev.rung)
        elif isinstance(ev, Packet) and ev.kind is PacketKind.LATENTS:
            timer.add(ev.unit, "transfer", ev.seconds)
            latents_in[ev.unit] = (ev.nbytes, ev.seconds)
            assert ev.latents is not None
            thinker.on_latents(ev.unit, ev.latents)  # emits every output of this tick
            shipped_ns.pop(ev.unit)
            latents_in.pop(ev.unit)
        elif isinstance(ev, EndSession):
            closing[ev.slot] = thinker.next_tick - 1
        else:
            raise TypeError(f"thinker got an unexpected {type(ev).__name__}: {ev!r:.200}")
        for slot, last in list(closing.items()):
            if thinker.finished(last):
                thinker.leave(slot)
                shell.send(SessionClosed(sessions.pop(slot), slot))
                del closing[slot]


def performer_loop(shell: Shell, streamer: Streamer) -> None:
    transport = shell.transport
    assert transport is not None
    performer = Performer(streamer, eval_delay_s=shell.spec.test_eval_delay_s, slots=shell.spec.slots,
                          shared=shell.shared)
    for ev in shell.events():
        if not isinstance(ev, Packet):
            raise TypeError(f"performer got an unexpected {type(ev).__name__}: {ev!r:.200}")
        if ev.kind is PacketKind.OPEN:
            assert ev.rows is not None
            performer.open(ev.seed, ev.rows)
        elif ev.kind is PacketKind.JOIN:
            assert ev.rows is not None
            performer.join(ev.session, ev.seed, ev.unit, ev.rows)
        elif ev.kind is PacketKind.ROWS:
            assert ev.rows is not None
            solved = performer.on_rows(ev.rows, ev.rung)
            out = Packet(PacketKind.LATENTS, 0, unit=solved.unit, latents=solved.z)
            transport.send(out)
            stages = {**solved.stages, "transfer": ev.seconds}
            shell.send(SolveReport(0, solved.unit, stages, ev.nbytes, ev.seconds, out.sent_ns))
        else:
            raise ValueError(f"performer got a {ev.kind.name} packet; expected OPEN, JOIN or ROWS")


def worker_main(spec: WorkerSpec, conn: Connection, heartbeats: Any, steps: Any,
                side: Connection | None) -> None:
    """The multiprocessing target of both workers."""
    shell = Shell(spec, conn, heartbeats, steps)
    shell.guard()
    try:
        streamer = shell.load(side)
        shell.start_readers()
        (thinker_loop if spec.role is Role.THINKER else performer_loop)(shell, streamer)
        shell.close_transport()
    except BaseException:
        try:
            shell.send(WorkerFailed(spec.role, traceback.format_exc()))
        finally:
            os._exit(1)  # reader threads may sit in a blocking receive: do not wait for them
