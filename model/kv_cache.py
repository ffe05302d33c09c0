"""The KV cache of one session: preallocated per layer, prefill sinks, a ring of unit slots.

Logical row index: the sinks are rows [0, S); unit n is rows [S + n U, S + (n + 1) U).
Physical row: sinks stay put; unit n lives in slot n mod W. A chunk is written before it
attends, and it attends to the physical prefix [0, min(end, capacity)) where `end` is the
logical end of the chunk: before the ring wraps that prefix is exactly what was written so
far; after it wraps it is every row, the not-yet-overwritten tail of unit n - W included
(layout.py states the same rule as a mask). No mask, no copy, memory fixed by the preset.

Shapes per chunk: the chunk sizes are fixed by the preset, and from unit W on every chunk sees
the whole capacity, so a chunk's forward differs from unit to unit only in values: its
inputs and the physical rows it writes, which a span carries as a device tensor (a view of
`row_ids`), not as a Python int. That is what lets unit_graphs.py capture the steady state.

What the thinker ships to the performer is `rows(start, end)`; the performer `append`s them.
Where both processes can hold the same memory (one GPU through CUDA IPC, or one machine's
shared memory), the performer holds the thinker's very tensors instead (`shared`): the thinker
announces a `Span` it wrote and ships no rows; only the counters are each holder's own.
Counters are Python ints. Pure PyTorch: no processes, no sockets, no clocks.

A batch of sessions (batch rows are slots) shares the rows' placement: the logical unit is the
batch's tick, so every slot writes the same physical rows. A slot whose session joins later
(`reset_slot`, then its own prefill through `slot(b)`) has not written the ring's other rows:
`written` (B, capacity) records, per slot, the rows its session wrote, and once a slot has
joined on its own (`masked`) attention follows `written` instead of the prefix. For a session
that started at tick 0 the two are the same rows: before the ring wraps, the prefix is exactly
what was written; after, every row.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from model.config import UnitLayout


@dataclass
class KVRows:
    """Logical rows [start, start + n) of every layer: k, v (layers, B, Hkv, n, d)."""
    start: int
    k: Tensor
    v: Tensor

    @property
    def end(self) -> int:
        return self.start + self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


@dataclass(frozen=True)
class Span:
    """Logical rows [start, end) the owner of a shared cache wrote into it (in place of KVRows)."""
    start: int
    end: int


@dataclass
class CacheSpan:
    """Where a chunk goes and what it sees, computed once per forward for all layers."""
    rows: Tensor  # (n,) int64 on the cache's device: the physical rows the chunk writes
    visible: int  # the chunk attends to physical rows [0, visible)


@dataclass
class KVCache:
    k: Tensor  # (layers, B, Hkv, capacity, d)
    v: Tensor
    sinks: int  # S
    unit_rows: int  # U
    window: int  # W unit slots
    length: int = 0  # logical rows written so far (the high-water mark)
    written: Tensor | None = None  # (B, capacity) bool: rows each slot's session wrote (None: none)
    masked: bool = False  # a slot joined on its own: attention follows `written`, not the prefix
    row_ids: Tensor = field(init=False)  # (capacity,) int64 0, 1, ...: spans' rows are its slices

    def __post_init__(self) -> None:
        self.row_ids = torch.arange(self.capacity, device=self.k.device)
        if self.written is None:
            self.written = torch.zeros(self.k.shape[1], self.capacity, dtype=torch.bool, device=self.k.device)

    @classmethod
    def empty(cls, lay: UnitLayout, n_layers: int, n_kv_heads: int, head_dim: int, batch: int,
              device: torch.device | str, dtype: torch.dtype) -> "KVCache":
        shape = (n_layers, batch, n_kv_heads, lay.cache_rows, head_dim)
        return cls(k=torch.zeros(shape, device=device, dtype=dtype),
                   v=torch.zeros(shape, device=device, dtype=dtype),
                   sinks=lay.sinks, unit_rows=lay.unit, window=lay.window_units)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def physical(self, logical: int) -> int:
        if logical < self.sinks:
            return logical
        unit, off = divmod(logical - self.sinks, self.unit_rows)
        return self.sinks + (unit % self.window) * self.unit_rows + off

    def span(self, start: int, n: int) -> CacheSpan:
        """For a chunk of n logical rows from `start` (never crossing a unit's end)."""
        end = start + n
        if start >= self.sinks and (start - self.sinks) // self.unit_rows != (end - 1 - self.sinks) // self.unit_rows:
            raise ValueError(f"chunk rows [{start}, {end}) cross a unit boundary (U={self.unit_rows})")
        if start < self.sinks < end:
            raise ValueError(f"chunk rows [{start}, {end}) mix the sinks (S={self.sinks}) and unit 0")
        write_at = self.physical(start)  # the chunk never crosses a unit: its rows are contiguous
        return CacheSpan(rows=self.row_ids[write_at:write_at + n], visible=min(end, self.capacity))

    def mark(self, span: CacheSpan) -> None:
        """The span's rows hold its chunk now, in every slot: called before the chunk attends
        (the eager forward writes its rows first), or after a compiled one wrote them."""
        self.written[:, span.rows] = True

    def advance(self, end: int) -> None:
        """Called by the owner after a forward that wrote logical rows up to `end`."""
        self.length = max(self.length, end)

    def _physical_rows(self, start: int, end: int) -> Tensor:
        """Physical rows of logical rows [start, end), as an index tensor on the cache's device."""
        return torch.tensor([self.physical(i) for i in range(start, end)], device=self.k.device, dtype=torch.long)

    def rows(self, start: int, end: int) -> KVRows:
        """Logical rows [start, end) of every layer, gathered out of the ring (a copy)."""
        if end > self.length or start < end - self.capacity or start > end:
            raise ValueError(f"rows [{start}, {end}) not held: {self.length} written, "
                             f"capacity {self.capacity}")
        idx = self._physical_rows(start, end)
        return KVRows(start=start, k=self.k.index_select(3, idx), v=self.v.index_select(3, idx))

    def append(self, rows: KVRows) -> None:
        """Write rows shipped from another holder of the same session (the performer's side)."""
        idx = self._physical_rows(rows.start, rows.end)
        self.k.index_copy_(3, idx, rows.k.to(self.k.dtype))
        self.v.index_copy_(3, idx, rows.v.to(self.v.dtype))
        self.written[:, idx] = True
        self.advance(rows.end)

    def forget(self, slot: int, start: int, end: int) -> None:
        """Logical rows [start, end) are not slot `slot`'s session's: appended with a later
        tick's rows, they were written before it joined (the performer's side of a join)."""
        self.written[slot, self._physical_rows(start, end)] = False

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()
        self.written.zero_()
        self.length = 0
        self.masked = False

    def shared(self) -> "KVCache":
        """Another holder of these very tensors (k, v, `written`) with counters of its own: what
        the performer steps on when the thinker's cache is shared with it."""
        return KVCache(k=self.k, v=self.v, sinks=self.sinks, unit_rows=self.unit_rows, window=self.window,
                       written=self.written)

    def follow_reset(self) -> None:
        """The owner of this shared cache reset it (`reset`): this holder's counters follow;
        the rows are the owner's to clear."""
        self.length, self.masked = 0, False

    def reset_slot(self, slot: int) -> None:
        """Empty batch row `slot` for a new session; the other slots go on untouched."""
        self.k[:, slot].zero_()
        self.v[:, slot].zero_()
        self.written[slot] = False
        self.masked = True

    def slot(self, slot: int) -> "KVCache":
        """Batch row `slot` as a cache of its own (views: writes land in this cache), empty,
        for that slot's prefill: the sinks are the same rows at every tick."""
        return KVCache(k=self.k[:, slot:slot + 1], v=self.v[:, slot:slot + 1], sinks=self.sinks,
                       unit_rows=self.unit_rows, window=self.window, written=self.written[slot:slot + 1])
