"""What every host wrapper in kernels/ checks before it launches a Triton kernel.

- Where kernels run: on a CUDA device, or on CPU under Triton's interpreter. Triton decides
  that when a kernel is decorated, so TRITON_INTERPRET=1 must be set before kernels/ is
  imported; `INTERPRET` records what was in force then.
- Tensor checks with errors that say what was expected, what was found and how to fix it.
- The autotune configurations: the real ones on a GPU, exactly one under the interpreter
  (which has nothing to time).
This module launches nothing and never changes the environment.
"""
from __future__ import annotations

import os

import torch
import triton
from torch import Tensor

INTERPRET: bool = os.environ.get("TRITON_INTERPRET") == "1"

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)  # attention head sizes the kernels tile (powers of two)


def autotune_configs(gpu: list[triton.Config], interpret: triton.Config) -> list[triton.Config]:
    """`gpu` when compiling for a device, `[interpret]` under the interpreter."""
    return [interpret] if INTERPRET else gpu


def upcast_tiles(dtype: torch.dtype) -> bool:
    """Whether kernels must cast loaded tiles to fp32: the interpreter gets bf16 tl.dot and bf16
    arithmetic wrong (numpy has no bf16); on a GPU bf16 tensor-core dots accumulate in fp32."""
    return INTERPRET and dtype == torch.bfloat16


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: exact fp32 products for fp32 inputs (tf32 would lose ~3 digits
    against the references); 16-bit inputs ignore it."""
    return "ieee" if dtype == torch.float32 else "tf32"


def check_device(where: str, **tensors: Tensor) -> torch.device:
    """All tensors on one device, and that device able to run Triton here."""
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if any(d != first for d in devices.values()):
        raise ValueError(f"{where}: tensors must share one device, found "
                         + ", ".join(f"{n} on {d}" for n, d in devices.items()))
    if first.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"{where}: tensors are on {first}, but Triton kernels need a CUDA device. Move them "
            f"with .cuda(), or set TRITON_INTERPRET=1 before importing kernels/ to run the Triton "
            f"interpreter on CPU (slow: tests only).")
    return first


def check_float(where: str, **tensors: Tensor) -> torch.dtype:
    """All tensors of one floating dtype the kernels support."""
    dtypes = {name: t.dtype for name, t in tensors.items()}
    first = next(iter(dtypes.values()))
    if first not in FLOAT_DTYPES or any(d != first for d in dtypes.values()):
        raise TypeError(f"{where}: expected one dtype among {FLOAT_DTYPES} for "
                        f"{', '.join(dtypes)}; found " + ", ".join(f"{n} {d}" for n, d in dtypes.items()))
    return first


def check_rows_contiguous(where: str, **tensors: Tensor) -> None:
    """The last dimension has stride 1 (other strides are free: cache slices, transposes)."""
    for name, t in tensors.items():
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{where}: {name} must have stride 1 in its last dimension, found strides "
                f"{tuple(t.stride())} for shape {tuple(t.shape)}; pass {name}.contiguous()")


def check_attention_inputs(where: str, q: Tensor, k: Tensor, v: Tensor) -> tuple[int, ...]:
    """q (B, Hq, Lq, d), k and v (B, Hkv, Lk, d), Hq a multiple of Hkv, d in HEAD_DIMS.

    Returns (B, Hq, Hkv, Lq, Lk, d)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{where}: {name} must be 4-D (B, H, L, d), found shape {tuple(t.shape)}")
    B, Hq, Lq, d = q.shape
    Bk, Hkv, Lk, dk = k.shape
    if v.shape != k.shape:
        raise ValueError(f"{where}: k and v must have one shape, found k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if Bk != B or dk != d:
        raise ValueError(f"{where}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree on "
                         f"batch (dim 0) and head size (dim 3)")
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{where}: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if d not in HEAD_DIMS:
        raise ValueError(f"{where}: head size {d} is not tiled; supported head sizes: {HEAD_DIMS}")
    if Lq == 0 or Lk == 0:
        raise ValueError(f"{where}: empty attention: Lq={Lq}, Lk={Lk}")
    check_device(where, q=q, k=k, v=v)
    check_float(where, q=q, k=k, v=v)
    check_rows_contiguous(where, q=q, k=k, v=v)
    return B, Hq, Hkv, Lq, Lk, d


def check_out(where: str, out: Tensor, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """A caller's output buffer: the expected shape, dtype and device, stride 1 last."""
    if tuple(out.shape) != tuple(shape) or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(f"{where}: out must be {tuple(shape)} {like.dtype} on {like.device}, "
                         f"found {tuple(out.shape)} {out.dtype} on {out.device}")
    check_rows_contiguous(where, out=out)
    return out
