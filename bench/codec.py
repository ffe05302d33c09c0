"""The codec, heard and judged: `duplex codec` streams a wav through a checkpoint's VAE audio
path unit by unit (what a call hears); `duplex eval codec` says whether it speaks.

The eval speaks the judges' 40 phrases (bench/judges.py) in the held-out voice (never in the
codec's training data, model/speech_corpus.py) through espeak-ng, streams each through the
codec, and asks the judges about the clean input and the codec's output: pocketsphinx with a
grammar of every phrase and its minimal-pair distractor, its open-vocabulary WER, and the
log-spectral distance. It prints a table and writes JSON to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench.judges import (PHRASES, grammar_judge, log_spectral_distance, noise_vocoder, open_wer,
                          read_wav, write_wav)
from model.checkpoint import load_checkpoint
from model.vae import AVVAE

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("clean", "codec", "vocoder")


@torch.no_grad()
def stream_through(vae: AVVAE, audio: np.ndarray) -> np.ndarray:
    """float samples at the model's rate -> the codec's output, encoded and decoded one 160 ms
    unit at a time with carried state (the clip is padded with silence to whole units)."""
    spu = vae.samples_per_unit
    p = next(vae.parameters())
    n = -(-len(audio) // spu) * spu
    x = torch.zeros(1, n, dtype=p.dtype, device=p.device)
    x[0, :len(audio)] = torch.from_numpy(np.asarray(audio, np.float32))
    enc, dec = vae.audio_encoder.init_state(1, p.device, p.dtype), vae.audio_decoder.init_state(1, p.device, p.dtype)
    out = [vae.decode_audio(vae.encode_audio(u, enc), dec) for u in x.split(spu, 1)]
    return torch.cat(out, 1)[0, :len(audio)].float().clamp(-1, 1).cpu().numpy()


def codec_file(checkpoint: str, src: str, dst: str) -> dict:
    from model.speech_corpus import resample
    model = load_checkpoint(checkpoint, dtype=torch.float32)
    rate = model.cfg.audio.sample_rate
    x, src_rate = read_wav(src)
    t0 = time.perf_counter()
    y = stream_through(model.vae, resample(x, src_rate, rate))
    took = time.perf_counter() - t0
    write_wav(dst, y, rate)
    return {"seconds": len(y) / rate, "compute_s": took, "real_time_factor": took / max(len(y) / rate, 1e-9),
            "rate": rate, "out": dst}


def judge(clean: np.ndarray, heard: np.ndarray, rate: int, phrase) -> dict:
    picked = grammar_judge(heard, rate)
    return {"picked": picked, "correct": picked == phrase.text, "wer": open_wer(heard, rate, phrase.text),
            "lsd_db": log_spectral_distance(clean, heard, rate)}


def eval_codec(checkpoint: str, phrases=PHRASES, voice: str | None = None) -> dict:
    from model.speech_corpus import HELDOUT_VOICE, espeak
    voice = voice or HELDOUT_VOICE
    model = load_checkpoint(checkpoint, dtype=torch.float32)
    rate = model.cfg.audio.sample_rate
    rows = []
    for p in phrases:
        clean = espeak(p.text, voice, rate=rate)
        out = stream_through(model.vae, clean)
        rows.append({"phrase": p.text, "clean": judge(clean, clean, rate, p),
                     "codec": judge(clean, out, rate, p),
                     "vocoder": judge(clean, noise_vocoder(clean, rate), rate, p)})
    agg = {k: {"grammar_accuracy": float(np.mean([r[k]["correct"] for r in rows])),
               "wer": float(np.mean([r[k]["wer"] for r in rows])),
               "lsd_db": float(np.mean([r[k]["lsd_db"] for r in rows]))} for k in COLUMNS}
    return {"checkpoint": str(checkpoint), "preset": model.cfg.name, "voice": voice, "rate": rate,
            "phrases": len(rows), "summary": agg, "rows": rows}


def print_table(result: dict) -> None:
    s = result["summary"]
    print(f"codec eval: {result['checkpoint']} ({result['preset']}), {result['phrases']} held-out "
          f"phrases, voice {result['voice']}, {result['rate']} Hz; 'vocoder' is the judges' poor "
          f"reference (an 8-band noise vocoder of the clean input)")
    print(f"{'judge':<44}" + "".join(f"{c:>10}" for c in COLUMNS))
    for key, name, fmt in (("grammar_accuracy", "distractor-grammar accuracy (pocketsphinx)", ".3f"),
                           ("wer", "open-vocabulary WER (pocketsphinx)", ".3f"),
                           ("lsd_db", "log-spectral distance to clean (dB)", ".2f")):
        print(f"{name:<44}" + "".join(f"{s[c][key]:>10{fmt}}" for c in COLUMNS))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex codec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (model/checkpoint.py)")
    p.add_argument("--eval", action="store_true", help="judge the codec (as `duplex eval codec`)")
    p.add_argument("wav", nargs="*", help="in.wav out.wav: stream a file through the codec")
    args, rest = p.parse_known_args(argv)
    if args.eval:
        return eval_main(["--checkpoint", args.checkpoint, *rest])
    if len(args.wav) != 2:
        p.error("give in.wav and out.wav (or --eval)")
    print(json.dumps(codec_file(args.checkpoint, *args.wav)))
    return 0


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex eval codec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--phrases", type=int, default=len(PHRASES), help="the first N phrases")
    p.add_argument("--voice", default=None, help="espeak-ng voice (default: the held-out one)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/...)")
    args = p.parse_args(argv)
    result = eval_codec(args.checkpoint, PHRASES[:args.phrases], args.voice)
    result["host"] = platform.node()
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print_table(result)
    out = args.out or RESULTS / f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M}_codec-eval_{result['preset']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0
