"""Control messages between the supervisor and its two workers (multiprocessing pipes).

Tensors of the model's hot path (KV rows, latents) never travel here: they go over the
transport (transport.py). What does travel here is small, or is media at the edge of the
pair (input units in, decoded frames out), carried as numpy arrays so that pickling copies
them by value (a torch tensor sent through a pipe would detour through shared memory);
frames as uint8 RGB, a quarter of float32's bytes (model/media.py converts them).

Supervisor -> thinker: StartSession, InputTick, EndSession, Shutdown.
Supervisor -> performer: Shutdown.
Worker -> supervisor: Ready, SessionOpened, UnitOutput (thinker), SolveReport (performer),
SessionClosed, WorkerFailed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import torch

from model.duplex import Latents
from model.streaming import Character


class Role(str, Enum):
    THINKER = "thinker"
    PERFORMER = "performer"

    @property
    def rank(self) -> int:
        """Rank in the transport's process group: the thinker is the source of the cache."""
        return 0 if self is Role.THINKER else 1


@dataclass
class CharacterSpec:
    """A Character by value: image (3, H, W), voice (samples,) float32 in [-1, 1]."""
    name: str
    image: np.ndarray
    voice: np.ndarray
    persona: str

    @classmethod
    def of(cls, c: Character) -> "CharacterSpec":
        return cls(c.name, c.image.numpy(), c.voice.numpy(), c.persona)

    def character(self) -> Character:
        return Character(self.name, torch.from_numpy(self.image), torch.from_numpy(self.voice),
                         self.persona)


# -- supervisor -> worker ---------------------------------------------------------------------
@dataclass
class StartSession:
    session: int
    slot: int  # of the pair's batch
    character: CharacterSpec
    seed: int  # the performer's noise for the session's unit n is seeded by (seed, n)


@dataclass
class InputTick:
    """One unit of every slot of the pair (ticks.py): the thinker steps them at once."""
    tick: int
    frames: np.ndarray  # (slots, 4, H, W, 3) uint8 RGB (the thinker converts it on its device)
    audio: np.ndarray  # (slots, samples_per_unit) float32 in [-1, 1]
    texts: list[bytes]  # per slot, typed by its caller since its last unit: forced into the text slots
    rung: int = 0  # the quality ladder's rung the performer solves this tick at


@dataclass
class EndSession:
    """The session's last unit is in a tick already sent: finish it, then free the slot."""
    session: int
    slot: int


@dataclass
class Shutdown:
    pass


# -- worker -> supervisor ---------------------------------------------------------------------
@dataclass
class Ready:
    role: Role
    pid: int
    device: str
    transport: str


@dataclass
class SessionOpened:
    """The thinker has prefilled the character and shipped the initial cache; the session
    steps from `tick` on."""
    session: int
    tick: int


@dataclass
class UnitOutput:
    """One unit of one session of the avatar, decoded, with the thinker's timings: the thinker
    sends its tick as `unit`, and the slot; the supervisor makes `unit` the session's own (its
    model unit), and the session fills in the rest (session.py): what the front end plays."""
    session: int
    unit: int
    text: np.ndarray  # (k,) int64 text slots (bytes, PAD when silent)
    z_video: np.ndarray  # (Rv, Cv p^2) the performer's latents, as committed
    z_audio: np.ndarray  # (Ra, Ca)
    frames: np.ndarray  # (4, H, W, 3) uint8 RGB
    audio: np.ndarray  # (samples_per_unit,) float32 in [-1, 1]
    stages: dict[str, float] = field(default_factory=dict)
    latents_bytes: int = 0  # the latents' message, performer -> thinker
    latents_seconds: float = 0.0
    shipped_ns: int = 0  # monotonic ns when unit n's KV rows were sent to the performer
    slot: int = 0  # of the pair's batch
    # filled by the session:
    clock_unit: int = -1  # the unit on the clock this answers: it plays in that unit's place
    steps: int = 0  # the solver steps of the quality ladder's rung it ran at
    top_steps: int = 0  # the top rung's steps: fewer is reduced quality
    skipped: int = 0  # input units of this session skipped so far (the pair was behind)
    caption: str = ""  # what the avatar says in this unit ("" when silent)
    signal_to_signal_s: float = 0.0  # unit handed over -> its output back (model side)
    ready_at: float = 0.0  # time.monotonic() when it was back

    def latents(self) -> Latents:
        return Latents(torch.from_numpy(self.z_video)[None], torch.from_numpy(self.z_audio)[None])


@dataclass
class SolveReport:
    """The performer's timings for a tick, sent after its z went back to the thinker (the
    supervisor hands it to each session with a unit in that tick, as that unit's)."""
    session: int
    unit: int
    stages: dict[str, float]
    rows_bytes: int  # the KV rows' message, thinker -> performer
    rows_seconds: float
    sent_ns: int  # monotonic ns when z_n was sent


@dataclass
class SessionClosed:
    session: int
    slot: int


@dataclass
class WorkerFailed:
    """The worker's last word before it exits: what went wrong, with the traceback."""
    role: Role
    error: str


ToWorker = StartSession | InputTick | EndSession | Shutdown
FromWorker = Ready | SessionOpened | UnitOutput | SolveReport | SessionClosed | WorkerFailed
