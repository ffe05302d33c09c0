"""`duplex train --stage codec`: the VAE learns to speak and to draw the characters' faces.

Reads top to bottom: config, data, model, loop, checkpoint. The VAE of a preset (the `demo`
preset: STFT in, iSTFT out for audio) is trained as a plain autoencoder, no GAN:
- audio on espeak-ng speech (model/speech_corpus.py: random sentences in the conversations'
  and the characters' voices, one voice held out) with a multi-resolution STFT loss and a
  log-mel L1 loss against the input delayed by the decoder's `delay` (model/istft.py);
- video on the characters' drawn faces (model/data/face.py), whose mouths follow the same
  step's speech crops, with an L1 + squared error loss.
Everything is a function of the seed: the corpus, the initial weights, and the crops and faces
of step n (drawn from generators seeded by (seed, n)), so the data position of a resume is
the step. Every `checkpoint_s` seconds (and at the end) it saves the run folder (model/run.py: a resumable state, the float16 checkpoint
that ships, the loss curve); a killed run started again with the same --out continues where
the last save stopped.
The judges (bench/judges.py) and the codec eval (bench/codec.py) are separate programs.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from model.config import FRAMES_PER_UNIT, preset
from model.duplex import build_model
from model.data.face import FaceRenderer
from model.data.speech import Synth
from model.data.tables import CHARACTERS
from model.media import frames_to_model
from model.run import RunRecipe, lr_scale, resume, run_steps
from model.speech_corpus import TRAIN_VOICES, corpus

CURVES, TITLE = ("loss", "stft", "mel", "video"), "codec training"


class CodecRecipe(RunRecipe):
    """Everything a codec run depends on (with RunRecipe's fields)."""
    preset: str = Field("demo", description="model preset whose VAE trains")
    out: Path = Field(Path("runs/codec"), description="run folder: train_state.pt, checkpoint/, loss.png, log.jsonl")
    seed: int = Field(0, description="corpus, initial weights and crops")
    utterances: int = Field(1200, description="random sentences (~3.3 s each: ~65 minutes of speech)")
    batch: int = Field(8, description="crops a step")
    crop_units: int = Field(8, description="crop length in 160 ms units")
    video_batch: int = Field(1, description="face clips a step")
    video_units: int = Field(8, description="face clip length in 160 ms units (the video VAE's causal "
                                            "context spans about 7: shorter clips leave its steady state untrained)")
    lr: float = Field(1e-3, description="AdamW peak of the audio path; linear warm-up, then cosine to lr / 10 at `steps`")
    video_lr: float = Field(2e-3, description="AdamW peak of the video path, on the same schedule")
    warmup: int = Field(200, description="warm-up steps")
    steps: int = Field(5400, description="schedule length (44 min on 2 quiet CPU cores at ~0.49 s a step)")
    minutes: float = Field(45.0, description="wall-clock budget of this invocation")
    vae_width: int | None = Field(None, description="override the preset's audio vae_width (tests: a tiny codec)")


# -- losses -----------------------------------------------------------------------------------

STFT_RESOLUTIONS = ((256, 64), (512, 128), (1024, 256), (2048, 512))  # (n_fft, hop)
MEL_BINS, MEL_FFT, MEL_HOP = 80, 1024, 256
LOG_FLOOR = 1e-3  # magnitude floor of the log terms: digital silence must not dominate


def _mag(x: Tensor, n_fft: int, hop: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop, window=window, center=False, return_complex=True).abs()


def mel_filters(rate: int, n_fft: int, bins: int, device: torch.device) -> Tensor:
    """(bins, n_fft / 2 + 1) triangular filters evenly spaced on the HTK mel scale."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)
    edges = 700 * (10 ** (torch.linspace(mel(0), mel(rate / 2), bins + 2) / 2595) - 1)
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up, down = (freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0).to(device)


def codec_loss(y: Tensor, x: Tensor, mel: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Multi-resolution STFT (spectral convergence + log-magnitude L1) + log-mel L1."""
    stft = y.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        X, Y = _mag(x, n_fft, hop), _mag(y, n_fft, hop)
        sc = torch.linalg.norm(Y - X) / torch.linalg.norm(X).clamp_min(1e-6)
        stft = stft + sc + F.l1_loss(Y.clamp_min(LOG_FLOOR).log(), X.clamp_min(LOG_FLOOR).log())
    stft = stft / len(STFT_RESOLUTIONS)
    X, Y = _mag(x, MEL_FFT, MEL_HOP), _mag(y, MEL_FFT, MEL_HOP)
    mel_l1 = F.l1_loss((mel @ Y).clamp_min(LOG_FLOOR).log(), (mel @ X).clamp_min(LOG_FLOOR).log())
    return stft + mel_l1, {"stft": stft.item(), "mel": mel_l1.item()}


# -- data -------------------------------------------------------------------------------------

def crops(stream: np.ndarray, seed: int, step: int, batch: int, length: int) -> Tensor:
    """The crops of step `step`: a pure function of (seed, step), so a resume replays none."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - length, batch)
    return torch.from_numpy(np.stack([stream[s:s + length] for s in starts]))


def face_clips(speech: Tensor, seed: int, step: int, batch: int, frames: int, h: int, w: int) -> Tensor:
    """The face clips of step `step`, (batch, frames, 3, h, w) in [-1, 1]: a random character
    each, its mouth following the start of a speech crop at a random level, its blinks and head
    motion drawn from a generator seeded by (seed, step)."""
    rng = np.random.default_rng([seed, step, 1])
    clips = []
    for i in range(batch):
        spec = CHARACTERS[sorted(CHARACTERS)[int(rng.integers(len(CHARACTERS)))]]
        x = speech[i % len(speech)].numpy()
        x = x[:len(x) // frames * frames] * (rng.uniform(0.02, 0.15) / max(float(np.sqrt(np.mean(x ** 2))), 1e-4))
        clips.append(FaceRenderer(spec, rng, h, w, frames).frames(x))
    return frames_to_model(torch.from_numpy(np.stack(clips)))


def video_loss(y: Tensor, x: Tensor) -> Tensor:
    return F.l1_loss(y, x) + F.mse_loss(y, x)


def psnr(y: Tensor, x: Tensor) -> float:
    """dB of frames in [-1, 1] (peak 2)."""
    return 10 * math.log10(4 / max(F.mse_loss(y.float(), x.float()).item(), 1e-12))


# -- the run ----------------------------------------------------------------------------------

def train(r: CodecRecipe) -> dict:
    from tqdm import tqdm
    device = r.torch_device()
    cfg = preset(r.preset)
    if r.vae_width:
        cfg = cfg.model_copy(update={"audio": cfg.audio.model_copy(update={"vae_width": r.vae_width})})
    rate = cfg.audio.sample_rate
    length = r.crop_units * cfg.audio.samples_per_unit
    frames, (h, w) = r.video_units * FRAMES_PER_UNIT, (cfg.video.height, cfg.video.width)

    # 1. data: the training voices only; the eval voice and phrases stay held out
    stream = corpus(r.seed, r.utterances, Synth(r.cache), rate, TRAIN_VOICES,
                    progress=lambda it: tqdm(it, desc="espeak-ng corpus", unit="utt"))
    # 2. model: seeded; only the VAE trains
    model = build_model(cfg, r.seed, device)
    torch.manual_seed(r.seed)
    vae = model.vae
    delay = vae.audio_delay  # the decoder reconstructs the crop this many samples late
    audio_params = [*vae.audio_encoder.parameters(), *vae.audio_decoder.parameters()]
    video_params = [*vae.video_encoder.parameters(), *vae.video_decoder.parameters()]
    params = audio_params + video_params
    opt = torch.optim.AdamW([{"params": audio_params, "peak": r.lr}, {"params": video_params, "peak": r.video_lr}],
                            lr=r.lr, betas=(0.8, 0.99), weight_decay=0.01)
    mel = mel_filters(rate, MEL_FFT, MEL_BINS, device)
    step, history, elapsed = resume(r.out, model, opt, device)  # 3. resume
    n_params = sum(p.numel() for p in params)
    print(f"codec: preset {cfg.name}, {n_params / 1e6:.2f} M parameters, {len(stream) / rate / 60:.1f} "
          f"min of speech at {rate} Hz, crops {length / rate:.2f} s x {r.batch}, faces {frames} frames "
          f"x {r.video_batch}")

    # 4. one step; the loop, its saves and its budget are model/run.py's
    window: list[float] = []

    def one_step(step: int) -> dict[str, float]:
        t0 = time.monotonic()
        x = crops(stream, r.seed, step, r.batch, length)
        v = face_clips(x, r.seed, step, r.video_batch, frames, h, w).to(device)
        x = x.to(device)
        for g in opt.param_groups:
            g["lr"] = g["peak"] * lr_scale(step, r.warmup, r.steps)
        y = vae.decode_audio(vae.encode_audio(x))
        loss, parts = codec_loss(y[:, delay:], x[:, :length - delay], mel)
        y = vae.decode_video(vae.encode_video(v))
        v_loss = video_loss(y, v)
        loss = loss + v_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        window[:] = [*window[-19:], time.monotonic() - t0]
        return {"loss": loss.item(), **parts, "video": v_loss.item(), "psnr_db": psnr(y.detach(), v),
                "audio_per_s": r.batch * length / rate / (sum(window) / len(window))}

    model.train()
    return run_steps(r, model, opt, step, history, elapsed, one_step, ("loss", "psnr_db", "audio_per_s"),
                     25, CURVES, TITLE)
