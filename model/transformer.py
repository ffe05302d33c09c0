"""The one Transformer for all modalities: per-token timestep modulation (adaLN), 3-axis
time-aligned RoPE, GQA attention with QK-norm, SwiGLU MLP.

`forward(x, t, pos, mask=None)` runs a whole sequence under a mask (training, offline);
`forward(x, t, pos, cache=..., span=cache.span(start, L))` writes the chunk's keys and values
into the session's KV cache and attends to the cache (serving). The two paths differ only at
the attention call. The cache is the caller's: this module holds weights only, and the caller
advances the cache after the forward. `backend` picks the attention, RoPE and norm+modulation
implementations (model/attention.py). Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import Backend, SparseMask, attend, attend_beside, norm_modulate, rotate
from model.config import TransformerConfig
from model.kv_cache import CacheSpan, KVCache


def rope_angles(pos: Tensor, split: tuple[int, int, int], theta: float) -> tuple[Tensor, Tensor]:
    """pos (L, 3) float (time, row, col) -> cos, sin (L, head_dim / 2) in fp32.

    Each axis gets its own band of rotary channels (sizes `split`, each even). The angles are
    taken in fp64: a batch's unit clock runs for as long as its worker pair does (hours of
    40 ms frames), where fp32 angles would lose their fractional part."""
    angles = []
    for axis, width in enumerate(split):
        freqs = theta ** (-torch.arange(0, width, 2, dtype=torch.float64, device=pos.device) / width)
        angles.append(pos[:, axis:axis + 1].double() * freqs)  # (L, width / 2)
    a = torch.cat(angles, dim=-1)
    return a.cos().float(), a.sin().float()


def timestep_features(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DiT does): (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device) / half)
    a = t.float()[..., None] * 1000.0 * freqs
    return torch.cat([a.cos(), a.sin()], dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wkv = nn.Linear(cfg.dim, 2 * cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | SparseMask | None, backend: Backend,
                cache: KVCache | None, layer: int, span: CacheSpan | None,
                held: list[tuple[Tensor, Tensor]] | None = None, stale: Tensor | None = None,
                prior: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, L, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, L, self.n_heads, self.head_dim)).transpose(1, 2)
        k, v = self.wkv(x).view(B, L, 2, self.n_kv_heads, self.head_dim).unbind(2)
        k, v = self.k_norm(k).transpose(1, 2), v.transpose(1, 2)  # (B, Hkv, L, d)
        q, k = rotate(q, cos, sin, backend), rotate(k, cos, sin, backend)
        if held is not None:  # the chunk's rows held beside the cache, written by the caller
            held.append((k, v))
            if prior is not None:  # earlier rows of the unit, held beside too: before the chunk's
                k, v = torch.cat([prior[0], k], 2), torch.cat([prior[1], v], 2)
            ck, cv = cache.k[layer][:, :, :span.visible], cache.v[layer][:, :, :span.visible]
            o = attend_beside(q, ck, cv, k, v, stale[..., :span.visible])
            return self.wo(o.transpose(1, 2).reshape(B, L, -1))
        if cache is not None:
            ck, cv = cache.k[layer], cache.v[layer]  # (B, Hkv, capacity, d)
            ck.index_copy_(2, span.rows, k)
            cv.index_copy_(2, span.rows, v)
            k, v = ck[:, :, :span.visible], cv[:, :, :span.visible]
            if cache.masked:  # a batch whose slots joined apart: each sees the rows its session wrote
                mask = cache.written[:, None, None, :span.visible]
        o = attend(q, k, v, mask, backend)  # (B, Hq, L, d)
        return self.wo(o.transpose(1, 2).reshape(B, L, -1))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.w_in = nn.Linear(cfg.dim, 2 * cfg.ffn_dim, bias=False)
        self.w_out = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.modulation = nn.Parameter(torch.zeros(6, cfg.dim))  # per-block bias on the shared one

    def forward(self, x: Tensor, mod: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | SparseMask | None,
                backend: Backend, cache: KVCache | None, layer: int, span: CacheSpan | None,
                held: list[tuple[Tensor, Tensor]] | None = None, stale: Tensor | None = None,
                prior: tuple[Tensor, Tensor] | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.modulation).unbind(2)  # (B, L or 1, D)
        h = norm_modulate(x, shift1, scale1, self.eps, backend)
        x = x + gate1 * self.attn(h, cos, sin, mask, backend, cache, layer, span, held, stale, prior)
        h = norm_modulate(x, shift2, scale2, self.eps, backend)
        return x + gate2 * self.mlp(h)


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.backend: Backend = "sdpa"
        self.t_embed = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.t_modulation = nn.Linear(cfg.dim, 6 * cfg.dim)  # shared by all blocks (as Wan does)
        self.final_modulation = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))

    def forward(self, x: Tensor, t: Tensor, pos: Tensor, mask: Tensor | SparseMask | None = None,
                cache: KVCache | None = None, span: CacheSpan | None = None,
                held: list[tuple[Tensor, Tensor]] | None = None,
                prior: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """x (B, L, D) embedded tokens; t (B, L) solver time per token (0 = clean context), or
        (B, 1): one time for the whole chunk (the modulation is computed once, not per token);
        pos (L, 3). Offline: mask (L, L) bool (or a SparseMask of one) or None. Serving: the
        cache and the chunk's span in it, `cache.span(start, L)`. `held`, a list: the cache is
        only read; each layer's chunk k, v (B, Hkv, L, d) are appended to it for the caller to
        write at span.rows, and attention takes them beside the cache (attend_beside; the
        compiled path). `prior` (with `held`): per layer, k, v (B, Hkv, P, d) of the P rows just
        before the chunk, held beside the cache as well (the text slots of a unit run as one
        graph); `span` then covers those P rows and the chunk's L, and `held` receives the
        chunk's rows only."""
        B, L, D = x.shape
        if cache is not None and mask is not None:
            raise ValueError("pass either a mask (whole sequence) or a cache (streaming), not both")
        if (cache is None) != (span is None):
            raise ValueError("streaming needs both the cache and the chunk's span: cache.span(start, L)")
        if held is not None and cache is None:
            raise ValueError("held (the chunk's k, v kept beside the cache) needs the cache and span")
        if prior is not None and held is None:
            raise ValueError("prior (earlier rows held beside the cache) needs held")
        if self.backend == "triton" and torch.is_grad_enabled():
            raise RuntimeError("backend 'triton' is inference only (its kernels have no backward): "
                               "run under torch.no_grad(), or train with 'reference' or 'sdpa'")
        cos, sin = rope_angles(pos, self.cfg.rope_split, self.cfg.rope_theta)
        temb = nn.functional.silu(self.t_embed(timestep_features(t, D).to(x.dtype)))  # (B, L, D)
        mod = self.t_modulation(temb).view(B, t.shape[1], 6, D)  # (B, L or 1, 6, D)
        stale = None
        if held is not None:  # the physical rows the chunk overwrites: not attended in the cache
            stale = torch.zeros(cache.capacity, dtype=torch.bool, device=x.device).index_fill(0, span.rows, True)
            if cache.masked:  # and, per slot, the rows its session did not write
                stale = stale | ~cache.written
        for i, block in enumerate(self.blocks):
            x = block(x, mod, cos, sin, mask, self.backend, cache, i, span, held, stale,
                      None if prior is None else prior[i])
        shift, scale = self.final_modulation(temb).chunk(2, dim=-1)
        return norm_modulate(x, shift, scale, self.cfg.norm_eps, self.backend)
