"""Checkpoints: the round trip is exact, and each bad checkpoint fails with an error naming
the tensor (or file), what was expected and what was found."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_checkpoint, save_checkpoint
from model.duplex import build_model

NAME = "transformer.blocks.0.attn.wq.weight"


def test_checkpoint_round_trip_is_exact(model, tmp_path: Path) -> None:
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tamper(folder: Path, edit) -> None:
    tensors = load_file(str(folder / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(folder / WEIGHTS))


@pytest.mark.parametrize("edit,pattern", [
    pytest.param(lambda t: t.pop(NAME), f"missing tensor.*{NAME}", id="missing"),
    pytest.param(lambda t: t.update(extra_head=torch.zeros(3)), "unexpected tensor.*extra_head", id="extra"),
    pytest.param(lambda t: t.update({NAME: torch.zeros(7, 7)}), f"{NAME}.*shape \\(7, 7\\), expected", id="shape"),
    pytest.param(lambda t: t.update({NAME: t[NAME].half()}), f"{NAME}.*dtype torch.float16, expected torch.float32", id="dtype"),
    pytest.param(lambda t: t[NAME].view(-1).__setitem__(3, float("nan")), f"{NAME}.*1 NaN/Inf", id="nan"),
])
def test_bad_checkpoint_is_a_named_error(model, tmp_path: Path, edit, pattern: str) -> None:
    save_checkpoint(model, tmp_path)
    _tamper(tmp_path, edit)
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_checkpoint(tmp_path)
    assert str(tmp_path / WEIGHTS) in str(err.value)


def test_missing_or_broken_files_are_named_errors(model, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=f"{CONFIG}: missing"):
        load_checkpoint(tmp_path)
    save_checkpoint(model, tmp_path)
    (tmp_path / CONFIG).write_text('{"name": "tiny"}')
    with pytest.raises(CheckpointError, match="not a valid model config"):
        load_checkpoint(tmp_path)
    save_checkpoint(model, tmp_path)
    (tmp_path / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_checkpoint(tmp_path)


def test_loaded_checkpoint_gives_the_same_outputs(cfg, tmp_path: Path) -> None:
    model = build_model(cfg, seed=3)
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    x = torch.randn(1, 5, cfg.transformer.dim)
    t, pos = torch.zeros(1, 5), torch.zeros(5, 3)
    with torch.no_grad():
        assert torch.equal(model.transformer(x, t, pos), loaded.transformer(x, t, pos))


SHIPPED_CODEC = Path(__file__).resolve().parents[2] / "checkpoints" / "demo-codec"


@torch.no_grad()
def test_the_shipped_codec_loads_and_reconstructs_speech_and_a_face() -> None:
    """checkpoints/demo-codec passes the load checks, is stored in float16 within the 50 MB
    budget, and is trained: a phrase in the held-out voice and a character's face come back
    close (untrained: a log-spectral distance of about 50 dB and a PSNR of about 10 dB)."""
    from bench.codec import frame_psnr, stream_frames, stream_through
    from bench.judges import log_spectral_distance
    from model.data.face import FaceRenderer
    from model.data.speech import Synth, espeak_available, speak
    from model.data.tables import CHARACTERS
    from model.speech_corpus import HELDOUT_VOICE
    from tests.missing import missing
    if not espeak_available():
        missing("espeak-ng is not installed (apt-get install espeak-ng)")
    assert (SHIPPED_CODEC / WEIGHTS).stat().st_size < 50e6
    assert next(iter(load_file(str(SHIPPED_CODEC / WEIGHTS)).values())).dtype == torch.float16
    model = load_checkpoint(SHIPPED_CODEC, dtype=torch.float32)
    assert model.cfg.name == "demo"
    rate, v = model.cfg.audio.sample_rate, model.cfg.video
    x = speak(Synth(), "pick up the red cup", HELDOUT_VOICE, rate)
    assert log_spectral_distance(x, stream_through(model.vae, x), rate) < 9
    face = FaceRenderer(CHARACTERS["ada"], np.random.default_rng(5), v.height, v.width, 40).frames(x)
    assert frame_psnr(face, stream_frames(model.vae, face)) > 26
