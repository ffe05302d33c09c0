"""The token stream: where each token sits (unit, segment, offset), its RoPE position, and
the block-causal attention rule that the training mask and the streaming cache both follow.

A unit is [obs | text | resp] (DESIGN's table). Training adds, per unit, a noisy copy of resp
(teacher forcing): clean resp is context for later units, the noisy copy carries the loss and
is seen by nobody else. The prefill (the character) comes first and is seen by every token.

The window: the KV cache keeps W unit slots in a ring; unit n writes into the slot of unit
n - W progressively, so a query of unit n whose chunk ends at offset b of its unit still sees
the rows of unit n - W from offset b on. The mask below states exactly that rule, which is why
the windowed cache equals the windowed mask. Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch
from torch import Tensor

from model.config import FRAMES_PER_UNIT, UnitLayout


class Kind(IntEnum):
    SINK = 0
    OBS = 1
    TEXT = 2
    RESP = 3  # clean response latents (context)
    NOISY = 4  # noisy response latents (training, and the performer's solver chunk)


@dataclass(frozen=True)
class Geometry:
    """Grids of the video tokens, used for the row/column RoPE axes."""
    resp_grid: tuple[int, int]  # avatar video tokens (rows, cols)
    obs_grid: tuple[int, int]  # user video tokens (rows, cols)


@dataclass
class TokenMeta:
    """Per-token facts of a chunk or a whole sequence: all (L,) except pos (L, 3)."""
    unit: Tensor  # int64, -1 for sinks
    kind: Tensor  # int64, a Kind
    off: Tensor  # int64, row offset inside the unit (noisy tokens share their clean twin's)
    pos: Tensor  # float32 (time, row, col); time counts 40 ms frames

    @staticmethod
    def cat(parts: list["TokenMeta"]) -> "TokenMeta":
        return TokenMeta(*(torch.cat([getattr(p, f) for p in parts]) for f in
                           ("unit", "kind", "off", "pos")))

    def __len__(self) -> int:
        return self.unit.shape[0]


def _grid_pos(rows: int, cols: int, onto: tuple[int, int]) -> Tensor:
    """(rows*cols, 2) cell centres of a rows x cols grid, in the coordinates of the `onto` grid."""
    r = (torch.arange(rows, dtype=torch.float32) + 0.5) * (onto[0] / rows) - 0.5
    c = (torch.arange(cols, dtype=torch.float32) + 0.5) * (onto[1] / cols) - 0.5
    return torch.cartesian_prod(r, c)


def _meta(unit: int, kind: Kind, off0: int, time: Tensor, rc: Tensor | None) -> TokenMeta:
    n = time.shape[0]
    rc = torch.zeros(n, 2) if rc is None else rc
    return TokenMeta(unit=torch.full((n,), unit, dtype=torch.long),
                     kind=torch.full((n,), int(kind), dtype=torch.long),
                     off=torch.arange(off0, off0 + n, dtype=torch.long),
                     pos=torch.cat([time[:, None].float(), rc], dim=1))


def sink_meta(lay: UnitLayout, geo: Geometry) -> TokenMeta:
    """Prefill tokens [image | voice | persona], at negative times before unit 0."""
    S = lay.sinks
    time = torch.arange(S, dtype=torch.float32) - S
    image = _meta(-1, Kind.SINK, 0, torch.full((lay.sink_image,), float(-S)),
                  _grid_pos(*geo.resp_grid, onto=geo.resp_grid))
    rest = _meta(-1, Kind.SINK, lay.sink_image, time[lay.sink_image:], None)
    return TokenMeta.cat([image, rest])


def unit_meta(lay: UnitLayout, geo: Geometry, n: int, kind: Kind, slot: int | None = None) -> TokenMeta:
    """Tokens of one segment of unit n (one text slot when `slot` is given)."""
    t0 = float(FRAMES_PER_UNIT * n)
    audio_t = t0 + torch.arange(lay.obs_audio, dtype=torch.float32)
    if kind == Kind.OBS:
        video = _meta(n, kind, 0, torch.full((lay.obs_video,), t0),
                      _grid_pos(*geo.obs_grid, onto=geo.resp_grid))
        return TokenMeta.cat([video, _meta(n, kind, lay.obs_video, audio_t, None)])
    if kind == Kind.TEXT:
        slots = range(lay.text) if slot is None else [slot]
        time = torch.tensor([t0 + FRAMES_PER_UNIT * j / lay.text for j in slots])
        return _meta(n, kind, lay.obs + slots[0], time, None)
    r0 = lay.obs + lay.text
    video = _meta(n, kind, r0, torch.full((lay.resp_video,), t0),
                  _grid_pos(*geo.resp_grid, onto=geo.resp_grid))
    audio = _meta(n, kind, r0 + lay.resp_video,
                  t0 + torch.arange(lay.resp_audio, dtype=torch.float32), None)
    return TokenMeta.cat([video, audio])


def sequence_meta(lay: UnitLayout, geo: Geometry, n_units: int, noisy: bool = True) -> TokenMeta:
    """The whole training sequence: sinks, then per unit [obs, text, resp, (noisy resp)]."""
    kinds = [Kind.OBS, Kind.TEXT, Kind.RESP] + ([Kind.NOISY] if noisy else [])
    parts = [sink_meta(lay, geo)]
    parts += [unit_meta(lay, geo, n, k) for n in range(n_units) for k in kinds]
    return TokenMeta.cat(parts)


def chunk_end(lay: UnitLayout, kind: Tensor, off: Tensor) -> Tensor:
    """Offset inside its unit at which a query's chunk ends: what the cache has written when
    the query runs (obs: the obs segment; a text slot: itself; resp and noisy: the whole unit)."""
    end = torch.full_like(off, lay.unit)
    end = torch.where(kind == Kind.OBS, torch.full_like(off, lay.obs), end)
    return torch.where(kind == Kind.TEXT, off + 1, end)


def block_causal_mask(q: TokenMeta, k: TokenMeta, lay: UnitLayout, window: int | None) -> Tensor:
    """(Lq, Lk) bool, True where query i may attend key j. window=None: the whole history."""
    qu, qk, qo = q.unit[:, None], q.kind[:, None], q.off[:, None]
    ku, kk, ko = k.unit[None, :], k.kind[None, :], k.off[None, :]
    same = qu == ku
    # Inside a unit: obs <-> obs; text sees obs and earlier slots; resp sees obs, text, resp;
    # noisy sees obs, text, and its own noisy segment.
    inside = ((kk == Kind.OBS) & (qk != Kind.SINK)) \
        | ((kk == Kind.TEXT) & (((qk == Kind.TEXT) & (ko <= qo)) | (qk == Kind.RESP) | (qk == Kind.NOISY))) \
        | ((kk == Kind.RESP) & (qk == Kind.RESP))
    earlier = (ku < qu) & (ku >= 0) & (kk != Kind.NOISY)
    if window is not None:
        b = chunk_end(lay, q.kind, q.off)[:, None]
        earlier &= (ku > qu - window) | ((ku == qu - window) & (ko >= b))
    sink = (kk == Kind.SINK)
    noisy_own = (kk == Kind.NOISY) & (qk == Kind.NOISY) & same
    return sink | noisy_own | (same & inside & (kk != Kind.NOISY) & (qk != Kind.SINK)) | (earlier & (qk != Kind.SINK))
