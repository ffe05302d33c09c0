"""The codec, heard, seen and judged: `duplex codec` streams a wav (or a video file) through a
checkpoint's VAE unit by unit, as a call would; `duplex eval codec` says whether it speaks and
draws the faces.

The eval speaks the judges' 40 phrases (bench/judges.py) in the held-out voice (never in the
codec's training data, model/speech_corpus.py) through espeak-ng, streams each through the
codec, and asks the judges about the clean input and the codec's output: pocketsphinx with a
grammar of every phrase and its minimal-pair distractor, its open-vocabulary WER, and the
log-spectral distance. It also streams each character's face (model/data/face.py, with blinks,
head motion and a mouth that follows the phrases, from seeds training never draws) through
the video path and reports the PSNR. It prints a table and writes JSON to bench/results/.
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
from model.config import FPS, FRAMES_PER_UNIT
from model.media import frames_to_model, frames_to_uint8
from model.vae import AVVAE

RESULTS = Path(__file__).parent / "results"
COLUMNS = ("clean", "codec", "vocoder")


@torch.no_grad()
def stream_through(vae: AVVAE, audio: np.ndarray) -> np.ndarray:
    """float samples at the model's rate -> the codec's output, encoded and decoded one 160 ms
    unit at a time with carried state (the clip is padded with silence to whole units), aligned
    with the input (the decoder's `audio_delay` samples dropped from the front)."""
    spu, delay = vae.samples_per_unit, vae.audio_delay
    p = next(vae.parameters())
    n = -(-(len(audio) + delay) // spu) * spu
    x = torch.zeros(1, n, dtype=p.dtype, device=p.device)
    x[0, :len(audio)] = torch.from_numpy(np.asarray(audio, np.float32))
    enc, dec = vae.audio_encoder.init_state(1, p.device, p.dtype), vae.audio_decoder.init_state(1, p.device, p.dtype)
    out = [vae.decode_audio(vae.encode_audio(u, enc), dec) for u in x.split(spu, 1)]
    return torch.cat(out, 1)[0, delay:delay + len(audio)].float().clamp(-1, 1).cpu().numpy()


@torch.no_grad()
def stream_frames(vae: AVVAE, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) at the model's size -> the codec's frames, encoded and decoded one
    unit (4 frames) at a time with carried state (the last frame is held to a whole unit)."""
    p = next(vae.parameters())
    n = -(-len(frames) // FRAMES_PER_UNIT) * FRAMES_PER_UNIT
    x = torch.from_numpy(np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), 0)]))
    enc, dec = vae.video_encoder.init_state(1, p.device, p.dtype), vae.video_decoder.init_state(1, p.device, p.dtype)
    out = [frames_to_uint8(vae.decode_video(vae.encode_video(frames_to_model(u[None].to(p.device), p.dtype), enc), dec))
           for u in x.split(FRAMES_PER_UNIT)]
    return torch.cat(out, 1)[0, :len(frames)].cpu().numpy()


def frame_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB of uint8 frames (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def read_frames(path: str, h: int, w: int) -> np.ndarray:
    """Every video frame of a file, scaled to (h, w) as a call's camera frames are: (T, h, w, 3)."""
    import av
    with av.open(path) as c:
        return np.stack([f.reformat(width=w, height=h, format="rgb24").to_ndarray() for f in c.decode(video=0)])


def write_frames(path: str, frames: np.ndarray) -> None:
    """(T, h, w, 3) uint8 at the model's 25 fps: y4m (raw) or, by the suffix, H.264 in mp4/mkv."""
    import av
    y4m = path.endswith(".y4m")
    with av.open(path, "w", format="yuv4mpegpipe" if y4m else None) as c:
        s = c.add_stream("rawvideo" if y4m else "libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            c.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        c.mux(s.encode())


def codec_video_file(checkpoint: str, src: str, dst: str) -> dict:
    model = load_checkpoint(checkpoint, dtype=torch.float32)
    v = model.cfg.video
    x = read_frames(src, v.height, v.width)
    t0 = time.perf_counter()
    y = stream_frames(model.vae, x)
    took = time.perf_counter() - t0
    write_frames(dst, y)
    return {"frames": len(y), "size": [v.height, v.width], "psnr_db": frame_psnr(x, y), "compute_s": took,
            "real_time_factor": took / (len(y) / FPS), "out": dst}


def codec_file(checkpoint: str, src: str, dst: str) -> dict:
    from model.data.speech import resample
    if Path(src).suffix.lower() != ".wav":
        return codec_video_file(checkpoint, src, dst)
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
    from model.data.speech import Synth, speak
    from model.speech_corpus import HELDOUT_VOICE
    voice = voice or HELDOUT_VOICE
    model = load_checkpoint(checkpoint, dtype=torch.float32)
    rate = model.cfg.audio.sample_rate
    rows, said, synth = [], [], Synth()
    for p in phrases:
        clean = speak(synth, p.text, voice, rate)
        said.append(clean)
        out = stream_through(model.vae, clean)
        rows.append({"phrase": p.text, "clean": judge(clean, clean, rate, p),
                     "codec": judge(clean, out, rate, p),
                     "vocoder": judge(clean, noise_vocoder(clean, rate), rate, p)})
    agg = {k: {"grammar_accuracy": float(np.mean([r[k]["correct"] for r in rows])),
               "wer": float(np.mean([r[k]["wer"] for r in rows])),
               "lsd_db": float(np.mean([r[k]["lsd_db"] for r in rows]))} for k in COLUMNS}
    speech = np.concatenate(said)
    return {"checkpoint": str(checkpoint), "preset": model.cfg.name, "voice": voice, "rate": rate,
            "phrases": len(rows), "summary": agg, "faces": face_psnr(model.vae, model.cfg, speech),
            "rows": rows}


FACE_SEED = 10_000  # the eval's faces: training draws its faces from generators seeded (seed, step, 1)


def face_psnr(vae: AVVAE, cfg, speech: np.ndarray) -> dict[str, float]:
    """PSNR (dB) of each character's face streamed through the video path: `speech` (at the
    model's rate) moves the mouth, at the characters' level, with blinks and head motion."""
    from model.data.face import FaceRenderer
    from model.data.episode import CHARACTER_LEVEL_DBFS
    from model.data.speech import set_level
    from model.data.tables import CHARACTERS
    v = cfg.video
    frames = len(speech) * FPS // cfg.audio.sample_rate
    speech = set_level(speech, CHARACTER_LEVEL_DBFS)
    out = {}
    for i, cid in enumerate(sorted(CHARACTERS)):
        clip = FaceRenderer(CHARACTERS[cid], np.random.default_rng([FACE_SEED, i]), v.height, v.width,
                            frames).frames(speech)
        out[cid] = frame_psnr(clip, stream_frames(vae, clip))
    return out


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
    for cid, db in result["faces"].items():
        print(f"{'face PSNR, ' + cid + ' (dB)':<44}{'':>10}{db:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex codec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (model/checkpoint.py)")
    p.add_argument("--eval", action="store_true", help="judge the codec (as `duplex eval codec`)")
    p.add_argument("files", nargs="*", metavar="in out",
                   help="in.wav out.wav: audio; or in.y4m|mp4|... out.y4m|mp4: the video, scaled to the "
                        "preset's size and written at 25 fps")
    args, rest = p.parse_known_args(argv)
    if args.eval:
        return eval_main(["--checkpoint", args.checkpoint, *rest])
    if len(args.files) != 2:
        p.error("give in.wav out.wav, or a video file in and out (or --eval)")
    print(json.dumps(codec_file(args.checkpoint, *args.files)))
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
