"""Pixels at the model's edge: uint8 RGB frames (B, 4, H, W, 3), as cameras and screens have
them and as they travel between processes (a quarter of float32's bytes), and the model's
float frames (B, 4, 3, H, W) in [-1, 1]. The one pair of conversions, run on the worker's
device (the thinker converts a unit's input once and its decoded output once). Audio stays
float32 in [-1, 1] at the model's rate everywhere. Pure PyTorch: no processes, no clocks."""
from __future__ import annotations

import torch
from torch import Tensor


def frames_to_model(frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (B, T, H, W, 3) -> (B, T, 3, H, W) in [-1, 1], in `dtype`."""
    if frames.dtype != torch.uint8 or frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (B, T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return (frames.permute(0, 1, 4, 2, 3).float() * (2 / 255) - 1).to(dtype).contiguous()


def frames_to_uint8(frames: Tensor) -> Tensor:
    """(B, T, 3, H, W) in [-1, 1] -> uint8 (B, T, H, W, 3), rounded to the nearest level."""
    return ((frames.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)
