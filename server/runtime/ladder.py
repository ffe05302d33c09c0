"""The quality controller: which rung of the quality ladder (model/flow.py `quality_ladder`)
the next unit runs at, from how late the units before it came back.

Lateness of unit n = when its decoded output was back - when its input was due on the unit
clock (`UnitClock.due(n)`): the model's signal-to-signal time plus any wait for the pair. In
steady state it is the length of the unit's path through the pair; when the loop-carried chain
no longer fits in a unit it grows by the overrun every unit. The rule, one unit at a time:

  down fast   a unit later than `down_s` that ran at the current rung or a lower one moves one
              rung down at once (a late unit that ran at a higher rung was already in flight
              when the controller stepped down: that step answered it)
  up slowly   `patience` units in a row no later than `up_s` move one rung up; a climb that
              is undone within `patience` units doubles the patience (up to `max_patience`),
              so a machine just at the edge does not oscillate; a climb that holds resets it

A pure function of the lateness series: no clock, no threads, no I/O. The runtime asks it which
rung to run (session.py); tests feed it series directly.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from model.config import UNIT_SECONDS


class ControllerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    down_s: float = Field(UNIT_SECONDS, gt=0)  # a unit later than this: one rung down
    up_s: float = Field(0.8 * UNIT_SECONDS, gt=0)  # units no later than this count towards a climb
    patience: int = Field(25, ge=1)  # calm units in a row before one rung up (25 = 4 s)
    max_patience: int = Field(400, ge=1)  # the most a failed climb may raise the patience to

    @model_validator(mode="after")
    def _check(self) -> "ControllerConfig":
        if self.up_s >= self.down_s:
            raise ValueError(f"up_s ({self.up_s}) must be below down_s ({self.down_s}): the gap is "
                             f"the hysteresis that keeps the rung from flapping")
        if self.max_patience < self.patience:
            raise ValueError(f"max_patience ({self.max_patience}) must be >= patience ({self.patience})")
        return self


@dataclass(frozen=True)
class LadderState:
    rung: int = 0  # index into the ladder: 0 is the top (the preset's own solver)
    calm: int = 0  # units in a row no later than up_s, at this rung
    patience: int = 25  # calm units needed to climb
    since_climb: int | None = None  # units seen since the last climb (None: no climb pending)


def initial_state(cfg: ControllerConfig, rung: int = 0) -> LadderState:
    return LadderState(rung=rung, patience=cfg.patience)


def next_state(s: LadderState, lateness: float, unit_rung: int, lowest: int,
               cfg: ControllerConfig) -> LadderState:
    """The state after one more unit came back `lateness` seconds after it was due, having
    run at rung `unit_rung`; `lowest` is the index of the ladder's last rung."""
    since = None if s.since_climb is None else s.since_climb + 1
    if lateness > cfg.down_s:
        if unit_rung < s.rung:  # ran before the last step down: that step already answered it
            return replace(s, calm=0, since_climb=since)
        patience = s.patience
        if since is not None and since <= s.patience:  # the last climb did not hold
            patience = min(cfg.max_patience, 2 * s.patience)
        return LadderState(rung=min(lowest, s.rung + 1), calm=0, patience=patience)
    if since is not None and since > s.patience:  # the last climb held: patience is reset
        s, since = replace(s, patience=cfg.patience), None
    calm = s.calm + 1 if lateness <= cfg.up_s and unit_rung == s.rung else 0
    if calm >= s.patience and s.rung > 0:
        return LadderState(rung=s.rung - 1, calm=0, patience=s.patience, since_climb=0)
    return replace(s, calm=calm, since_climb=since)


def rungs_for(series: Iterable[tuple[float, int]], lowest: int,
              cfg: ControllerConfig = ControllerConfig()) -> list[int]:
    """The rung chosen after each (lateness, rung the unit ran at) of a series."""
    s, out = initial_state(cfg), []
    for lateness, unit_rung in series:
        s = next_state(s, lateness, unit_rung, lowest, cfg)
        out.append(s.rung)
    return out
