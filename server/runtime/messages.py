"""Control messages between the supervisor and its two workers (multiprocessing pipes).

Tensors of the model's hot path (KV rows, latents) never travel here: they go over the
transport (transport.py). What does travel here is small, or is media at the edge of the
pair (input units in, decoded frames out), carried as numpy arrays so that pickling copies
them by value (a torch tensor sent through a pipe would detour through shared memory);
frames as uint8 RGB, a quarter of float32's bytes (model/media.py converts them).

Supervisor -> thinker: StartSession, InputUnit, EndSession, Shutdown.
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
    character: CharacterSpec
    seed: int  # the performer's noise for unit n is seeded by (seed, n)


@dataclass
class InputUnit:
    session: int
    unit: int
    frames: np.ndarray  # (1, 4, H, W, 3) uint8 RGB (the thinker converts it on its device)
    audio: np.ndarray  # (1, samples_per_unit) float32 in [-1, 1]
    text: bytes = b""  # typed by the caller since the last unit (UTF-8): forced into the text slots
    rung: int = 0  # the quality ladder's rung the performer solves this unit at


@dataclass
class EndSession:
    """Finish the units already handed over, then close the session on both workers."""
    session: int


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
    """The thinker has prefilled the character and shipped the initial cache."""
    session: int


@dataclass
class UnitOutput:
    """One unit of the avatar, decoded, with the thinker's timings for that unit."""
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
    clock_unit: int = -1  # filled by the session: the unit on the clock this answers
    steps: int = 0  # filled by the session: the solver steps it ran at

    def latents(self) -> Latents:
        return Latents(torch.from_numpy(self.z_video)[None], torch.from_numpy(self.z_audio)[None])


@dataclass
class SolveReport:
    """The performer's timings for unit n, sent after z_n went back to the thinker."""
    session: int
    unit: int
    stages: dict[str, float]
    rows_bytes: int  # the KV rows' message, thinker -> performer
    rows_seconds: float
    sent_ns: int  # monotonic ns when z_n was sent


@dataclass
class SessionClosed:
    session: int


@dataclass
class WorkerFailed:
    """The worker's last word before it exits: what went wrong, with the traceback."""
    role: Role
    error: str


ToWorker = StartSession | InputUnit | EndSession | Shutdown
FromWorker = Ready | SessionOpened | UnitOutput | SolveReport | SessionClosed | WorkerFailed
