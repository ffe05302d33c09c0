"""Checkpoints: a folder with `model.safetensors` (weights) and `config.json` (the ModelConfig).

Loading checks every tensor against the model the config builds and fails with an error that
names the tensor, what was expected, what was found and the file: a missing or extra tensor,
a wrong shape or dtype, or a NaN/Inf. Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.duplex import DuplexModel

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which tensor or field and why."""


def save_checkpoint(model: DuplexModel, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """dtype: store the weights in it (float16 halves a shipped checkpoint); None keeps the model's."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype=dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS), metadata={"preset": model.cfg.name})
    (folder / CONFIG).write_text(model.cfg.model_dump_json(indent=2))
    return folder


def load_config(folder: str | Path) -> ModelConfig:
    path = Path(folder) / CONFIG
    try:
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a checkpoint folder holds {WEIGHTS} and {CONFIG}") from None
    except (json.JSONDecodeError, ValidationError) as e:
        raise CheckpointError(f"{path}: not a valid model config: {e}") from None


def load_checkpoint(folder: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> DuplexModel:
    """Build the model the config describes and load the weights, checking each tensor.
    dtype=None keeps the checkpoint's dtype (which must be the same for every tensor)."""
    folder = Path(folder)
    cfg = load_config(folder)
    path = folder / WEIGHTS
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; a checkpoint folder holds {WEIGHTS} and {CONFIG}") from None
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a safetensors file: {e}") from None
    with torch.device("meta"):
        model = DuplexModel(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{path}: missing tensor(s) {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} expected by preset {cfg.name!r}")
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor(s) {', '.join(extra[:5])}"
                              f"{' ...' if len(extra) > 5 else ''}; not part of preset {cfg.name!r}")
    ref_dtype = next(iter(tensors.values())).dtype
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(got.shape)}, "
                                  f"expected {tuple(want.shape)} for preset {cfg.name!r}")
        if not got.dtype.is_floating_point or got.dtype != ref_dtype:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {got.dtype}, expected "
                                  f"{ref_dtype} like the rest of the checkpoint (a floating type)")
        if not torch.isfinite(got).all():
            bad = (~torch.isfinite(got)).sum().item()
            raise CheckpointError(f"{path}: tensor {name!r} holds {bad} NaN/Inf value(s)")
    model = model.to_empty(device=device)
    model.load_state_dict(tensors, assign=False)
    return model.to(dtype=dtype or ref_dtype).eval()
