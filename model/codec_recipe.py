"""`duplex train --stage codec`: the VAE's audio path learns to speak.

Reads top to bottom: config, data, model, loop, checkpoint. The audio encoder and decoder of
a preset's VAE (the `demo` preset: STFT in, iSTFT out) are trained as a plain autoencoder on
espeak-ng speech (model/speech_corpus.py: random sentences, many voices, one held out) with a
multi-resolution STFT loss and a log-mel L1 loss; no GAN. Everything is a function of the
seed: the corpus, the initial weights, and the crops of step n (drawn from a generator seeded
by (seed, n)), so the data position of a resume is the step. Every `checkpoint_s` seconds (and
at the end) it writes `train_state.pt` (model, optimiser, step, RNG, losses), the serving
checkpoint `checkpoint/` (safetensors + config.json, model/checkpoint.py) and `loss.png`;
a killed run started again with the same --out continues where the last checkpoint stopped.
The judges (bench/judges.py) and the codec eval (bench/codec.py) are separate programs.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from model.checkpoint import save_checkpoint
from model.config import preset
from model.duplex import DuplexModel, build_model
from model.speech_corpus import TRAIN_VOICES, corpus

STATE = "train_state.pt"


class CodecRecipe(BaseModel):
    """Everything a run depends on; `duplex train --help` lists each field as a flag."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    preset: str = Field("demo", description="model preset whose VAE audio path trains")
    out: Path = Field(Path("runs/codec"), description="run folder: train_state.pt, checkpoint/, loss.png, log.jsonl")
    cache: Path = Field(Path.home() / ".cache" / "duplex" / "speech",
                        description="espeak-ng utterances, shared by runs")
    seed: int = Field(0, description="corpus, initial weights and crops")
    utterances: int = Field(1200, description="random sentences (~3.3 s each: ~65 minutes of speech)")
    batch: int = Field(8, description="crops a step")
    crop_units: int = Field(8, description="crop length in 160 ms units")
    lr: float = Field(1e-3, description="AdamW peak; linear warm-up, then cosine to lr / 10 at `steps`")
    warmup: int = Field(200, description="warm-up steps")
    steps: int = Field(8000, description="schedule length (~45 min on 2 CPU cores at ~0.33 s a step)")
    minutes: float = Field(60.0, description="wall-clock budget of this invocation")
    stop_after: int | None = Field(None, description="end this invocation at this step (the schedule still spans `steps`)")
    checkpoint_s: float = Field(180.0, description="seconds between checkpoints")
    device: str = Field("cpu", description="cpu or cuda")
    threads: int | None = Field(None, description="torch threads on CPU (default: torch's)")
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


def lr_at(r: CodecRecipe, step: int) -> float:
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    p = min(1.0, (step - r.warmup) / max(1, r.steps - r.warmup))
    return r.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


# -- checkpoint -------------------------------------------------------------------------------

def save_state(r: CodecRecipe, model: DuplexModel, opt: torch.optim.Optimizer, step: int,
               history: list[dict], elapsed: float) -> None:
    r.out.mkdir(parents=True, exist_ok=True)
    tmp = r.out / (STATE + ".tmp")
    torch.save({"recipe": r.model_dump(mode="json"), "model": model.state_dict(),
                "opt": opt.state_dict(), "step": step, "data_position": step,
                "rng": torch.get_rng_state(), "history": history, "elapsed": elapsed}, tmp)
    tmp.replace(r.out / STATE)
    save_checkpoint(model, r.out / "checkpoint")
    plot_losses(history, r.out / "loss.png")


def plot_losses(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not history:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for key in ("loss", "stft", "mel"):
        ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"codec training ({history[-1]['minutes']:.1f} min)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the run ----------------------------------------------------------------------------------

def train(r: CodecRecipe) -> dict:
    from tqdm import tqdm
    torch.set_flush_denormal(True)  # denormals slowed CPU training 2.4x in the feasibility run
    if r.threads:
        torch.set_num_threads(r.threads)
    device = torch.device(r.device)
    cfg = preset(r.preset)
    if r.vae_width:
        cfg = cfg.model_copy(update={"audio": cfg.audio.model_copy(update={"vae_width": r.vae_width})})
    rate = cfg.audio.sample_rate
    length = r.crop_units * cfg.audio.samples_per_unit

    # 1. data: the training voices only; the eval voice and phrases stay held out
    stream = corpus(r.seed, r.utterances, r.cache, rate, TRAIN_VOICES,
                    progress=lambda it: tqdm(it, desc="espeak-ng corpus", unit="utt"))
    # 2. model: seeded; only the VAE's audio path trains
    model = build_model(cfg, r.seed, device)
    torch.manual_seed(r.seed)
    params = [*model.vae.audio_encoder.parameters(), *model.vae.audio_decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=r.lr, betas=(0.8, 0.99), weight_decay=0.01)
    mel = mel_filters(rate, MEL_FFT, MEL_BINS, device)
    step, history, elapsed = 0, [], 0.0
    if (r.out / STATE).exists():  # 3. resume
        state = torch.load(r.out / STATE, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        torch.set_rng_state(state["rng"])
        step, history, elapsed = state["data_position"], state["history"], state["elapsed"]
        print(f"resumed {r.out / STATE} at step {step} ({elapsed / 60:.1f} min trained)")
    n_params = sum(p.numel() for p in params)
    print(f"codec: preset {cfg.name}, {n_params / 1e6:.2f} M parameters, {len(stream) / rate / 60:.1f} "
          f"min of speech at {rate} Hz, crops {length / rate:.2f} s x {r.batch}")

    # 4. loop
    model.train()
    start, last_ckpt = time.monotonic(), time.monotonic()
    bar = tqdm(total=r.steps, initial=step, desc="codec", unit="step")
    window: list[float] = []
    last = min(r.steps, r.stop_after or r.steps)
    while step < last and time.monotonic() - start < r.minutes * 60:
        t0 = time.monotonic()
        x = crops(stream, r.seed, step, r.batch, length).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(r, step)
        y = model.vae.decode_audio(model.vae.encode_audio(x))
        loss, parts = codec_loss(y, x, mel)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        window.append(time.monotonic() - t0)
        window = window[-20:]
        speed = r.batch * length / rate / (sum(window) / len(window))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", audio_x=f"{speed:.1f}")
        if step % 25 == 0 or step == 1:
            history.append({"step": step, "loss": loss.item(), **parts, "audio_per_s": speed,
                            "minutes": (elapsed + time.monotonic() - start) / 60})
        if time.monotonic() - last_ckpt > r.checkpoint_s:
            save_state(r, model, opt, step, history, elapsed + time.monotonic() - start)
            last_ckpt = time.monotonic()
    bar.close()
    elapsed += time.monotonic() - start
    if window and history[-1]["step"] != step:  # the last step, if this invocation ran any
        history.append({"step": step, "loss": loss.item(), **parts, "audio_per_s": speed,
                        "minutes": elapsed / 60})
    save_state(r, model, opt, step, history, elapsed)  # 5. the final checkpoint
    summary = {"step": step, "minutes": elapsed / 60,
               "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None,
               "checkpoint": str(r.out / "checkpoint")}
    with open(r.out / "log.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["codec"], default="codec",
                   help="codec: the VAE's audio path (the whole model's stage comes later)")
    for name, field in CodecRecipe.model_fields.items():
        kind = {"out": Path, "cache": Path, "preset": str, "device": str}.get(name)
        kind = kind or (float if isinstance(field.default, float) else int)
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=field.default,
                       help=f"{field.description} (default {field.default})")
    args = vars(p.parse_args(argv))
    args.pop("stage")
    train(CodecRecipe(**args))
    return 0
