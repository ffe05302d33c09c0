"""`duplex train --stage codec` in miniature (a 16-channel audio codec, four utterances, the
demo preset's small video path): both losses fall, a killed run resumes exactly where its
checkpoint stopped, and `duplex codec` streams a wav through the checkpoint it wrote. Needs espeak-ng (tests/missing.py: CI fails without it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.judges import read_wav, write_wav
from model.checkpoint import load_checkpoint
from model.codec_recipe import (MEL_BINS, MEL_FFT, CodecRecipe, codec_loss, crops, face_clips,
                                mel_filters, psnr, train)
from model.data.speech import Synth, espeak_available, speak
from model.duplex import build_model
from model.run import STATE
from model.speech_corpus import corpus, utterances
from server.cli import main as duplex
from tests.missing import missing

if not espeak_available():
    missing("espeak-ng is not installed (apt-get install espeak-ng): the codec trains on its speech")

SMALL = dict(utterances=4, batch=4, crop_units=2, video_batch=2, video_units=1, warmup=5, lr=3e-3,
             video_lr=3e-3, vae_width=16, threads=1, minutes=30.0, checkpoint_s=1e9)  # steps end each run, not the clock


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    out = tmp_path_factory.mktemp("codec")
    train(CodecRecipe(out=out, cache=cache, steps=250, **SMALL))
    return out


@torch.no_grad()
def test_both_losses_fall(trained: Path, cache: Path) -> None:
    """On crops of the training speech and on faces of an unseen seed, the trained codec beats
    its initial weights: the audio loss, and the faces' PSNR."""
    trained_model = load_checkpoint(trained / "checkpoint", dtype=torch.float32)
    initial = build_model(trained_model.cfg, seed=0)
    cfg = trained_model.cfg
    rate = cfg.audio.sample_rate
    stream = corpus(0, SMALL["utterances"], Synth(cache), rate)
    x = crops(stream, seed=99, step=0, batch=8, length=2 * cfg.audio.samples_per_unit)
    mel = mel_filters(rate, MEL_FFT, MEL_BINS, x.device)
    before, after = (codec_loss(m.vae.decode_audio(m.vae.encode_audio(x)), x, mel)[0].item()
                     for m in (initial, trained_model))
    assert after < 0.75 * before, (before, after)
    faces = face_clips(x, seed=99, step=0, batch=4, frames=8, h=cfg.video.height, w=cfg.video.width)
    db_before, db_after = (psnr(m.vae.decode_video(m.vae.encode_video(faces)), faces)
                           for m in (initial, trained_model))
    assert db_after > db_before + 6, (db_before, db_after)
    assert (trained / "loss.png").stat().st_size > 1000


def test_a_killed_run_resumes_where_its_checkpoint_stopped(tmp_path: Path, cache: Path) -> None:
    whole = train(CodecRecipe(out=tmp_path / "whole", cache=cache, steps=12, **SMALL))
    train(CodecRecipe(out=tmp_path / "parts", cache=cache, steps=12, stop_after=7, **SMALL))  # "killed"
    parts = train(CodecRecipe(out=tmp_path / "parts", cache=cache, steps=12, **SMALL))
    assert parts["step"] == whole["step"] == 12
    assert train(CodecRecipe(out=tmp_path / "parts", cache=cache, steps=12, **SMALL))["step"] == 12  # done: a no-op
    a = torch.load(tmp_path / "whole" / STATE, weights_only=False)["model"]
    b = torch.load(tmp_path / "parts" / STATE, weights_only=False)["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_the_training_voices_never_include_the_held_out_one() -> None:
    from model.speech_corpus import HELDOUT_VOICE
    assert all(u.voice != HELDOUT_VOICE for u in utterances(0, 500))


def test_duplex_codec_streams_a_wav_through_the_checkpoint(trained: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    write_wav(src, speak(Synth(), "hello there", "en-us", 22_050), 22_050)  # resampled to the model's rate
    assert duplex(["codec", "--checkpoint", str(trained / "checkpoint"), str(src), str(dst)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    y, rate = read_wav(dst)
    assert rate == 24_000 and report["rate"] == 24_000
    assert abs(len(y) / rate - len(read_wav(src)[0]) / 22_050) < 1e-3
    assert np.abs(y).max() > 1e-3


def test_duplex_codec_streams_a_video_through_the_checkpoint(trained: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A y4m of 10 frames at twice the preset's size: scaled down, streamed unit by unit (the
    last frame held to a whole unit), written back as 10 frames; the face comes through."""
    from bench.codec import read_frames, write_frames
    cfg = load_checkpoint(trained / "checkpoint").cfg
    h, w = cfg.video.height, cfg.video.width
    speech = torch.from_numpy(speak(Synth(), "hello there", "en-us", 24_000))[None]
    faces = face_clips(speech, seed=7, step=0, batch=1, frames=10, h=2 * h, w=2 * w)
    src, dst = tmp_path / "in.y4m", tmp_path / "out.y4m"
    write_frames(str(src), ((faces[0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy())
    assert duplex(["codec", "--checkpoint", str(trained / "checkpoint"), str(src), str(dst)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = read_frames(str(dst), h, w)
    assert out.shape == (10, h, w, 3) and report["frames"] == 10
    assert report["psnr_db"] > 14, report  # an untrained video path scores about 9
