"""`duplex eval voice --checkpoint C`: has the model learnt its character's voice, and its choice of
words, given its true past?

`duplex eval model` plays calls: every unit's context is the model's own output, so a voice the
judge cannot hear may be a voice never learnt or a call's context gone astray. This eval is the
training path's view (teacher-forced): held-out conversations in one offline forward, the true
text in the text slots and the true speech and face as the context, and asks of the audio alone:

- its flow-matching error at fixed solver times over the character's voiced units, and over its
  silent ones. A voiced unit's latents are a function of (character, phrase, unit of the phrase)
  (the characters' voices are fixed and an utterance starts on a unit), so a model that has
  learnt the voice takes the voiced error down towards the silent one; knowing nothing of the
  latents but their scale leaves about 1.1 at t = 0.95 and 1.7 at t = 0.7.
- the voice sampled given that true past (every unit at once: a unit's noisy copy is seen by no
  other), decoded, and the answer grammar's judge (as in `duplex eval model`) on each answer.
- the text head's most likely bytes over each answer ("read"): whether it reads the planned byte
  everywhere the character chooses what it says ("chosen": the first byte, the colour's after
  "That card is "; tables.choice_points), and every byte of a colour answer's colour word
  ("colour_word"). A call's captions are these choices made on its own past.
`--split train` asks the same of training conversations: what was learnt at all, against what
carries to new voices, phrasings and backgrounds.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench.conversation_eval import RESULTS, answer_spans, answer_texts, normalise
from bench.judges import pick
from model.config import PAD
from model.data import CHARACTERS, Episode, Synth, conversation, media_batch
from model.data.tables import SPLITS, choice_points
from model.duplex import DuplexModel, Latents
from model.flow import noisy, timesteps
from model.model_recipe import to_conversation
from model.train import Conversation, forward_sequence

TIMES = (0.7, 0.95)


def flow_errors(model: DuplexModel, conv: Conversation, voiced: torch.Tensor, t: float,
                g: torch.Generator) -> tuple[float, float]:
    """The audio's flow MSE at solver time t over voiced and over silent units (one draw of noise)."""
    B, N = conv.text.shape[:2]
    times = torch.full((B, N), t)
    eps = Latents(*(torch.randn(x.shape, generator=g) for x in conv.resp))
    x_t = Latents(*(noisy(x0, e, times) for x0, e in zip(conv.resp, eps)))
    v = forward_sequence(model, conv, x_t, times, model.cfg.window_units).velocity.audio
    err = ((v - (eps.audio - conv.resp.audio)) ** 2).mean((-1, -2))
    return err[voiced].mean().item(), err[~voiced].mean().item()


def sampled_voice(model: DuplexModel, conv: Conversation, steps: int, g: torch.Generator) -> np.ndarray:
    """Every unit's latents solved (Euler) against the true past, the audio decoded: (N * S,)."""
    B, N = conv.text.shape[:2]
    x = Latents(*(torch.randn(r.shape, generator=g) for r in conv.resp))
    ts = timesteps(steps, model.cfg.flow.shift)
    for t_cur, t_next in zip(ts[:-1], ts[1:]):
        v = forward_sequence(model, conv, x, torch.full((B, N), t_cur), model.cfg.window_units).velocity
        x = Latents(*(xi + (t_next - t_cur) * vi for xi, vi in zip(x, v)))
    return model.vae.decode_audio(x.audio.flatten(1, 2))[0].clamp(-1, 1).numpy()


def words_read(model: DuplexModel, conv: Conversation, ep: Episode) -> list[dict]:
    """For each answer (as `answer_spans`), teacher-forced: its intent, its bytes as read, whether
    every byte where it is chosen (tables.choice_points) is read as planned, and for a colour
    answer whether every byte of the colour word is."""
    logits = forward_sequence(model, conv, conv.resp, torch.zeros(conv.text.shape[:2]), model.cfg.window_units).logits
    read = logits[0].argmax(-1)  # (N, k)
    rows = []
    for turn, _ in answer_spans(ep):
        slots = ep.text_slots(turn)
        said = bytes(int(read[s]) if read[s] < PAD else ord("?") for s in slots).decode("latin-1")
        row = {"intent": turn.intent, "planned": turn.text, "read": said,
               "chosen": all(n < len(said) and said[n] == turn.text[n]
                             for n in choice_points(CHARACTERS[ep.character], turn.text))}
        if turn.intent == "colour" and ep.card_colour:
            at = turn.text.index(ep.card_colour)
            row["colour_word"] = said[at:at + len(ep.card_colour)] == ep.card_colour
        rows.append(row)
    return rows


def answers_heard(ep: Episode, audio: np.ndarray, samples_per_unit: int, rate: int) -> list[bool]:
    """The grammar judge on each whole answer (as `duplex eval model` judges them)."""
    grammar, spu = answer_texts(ep.character), samples_per_unit
    return [pick(audio[a * spu:b * spu], rate, grammar) == normalise(t.text) for t, (a, b) in answer_spans(ep)]


@torch.no_grad()
def evaluate(checkpoint: str, conversations: int, units: int, steps: int, split: str = "heldout") -> dict:
    from model.checkpoint import load_checkpoint
    model = load_checkpoint(checkpoint, dtype=torch.float32).eval()
    cfg, synth, g = model.cfg, Synth(), torch.Generator().manual_seed(0)
    errors: dict[str, list[float]] = {f"{w} t={t}": [] for t in TIMES for w in ("voiced", "silent")}
    heard: list[bool] = []
    words: list[dict] = []
    for seed in range(conversations):
        ep = conversation(seed, cfg, split, units, synth=synth)
        conv = to_conversation(model, media_batch([ep], cfg, synth), torch.device("cpu"))
        voiced = torch.from_numpy(ep.char_speaking)[None]
        for t in TIMES:
            on, off = flow_errors(model, conv, voiced, t, g)
            errors[f"voiced t={t}"].append(on)
            errors[f"silent t={t}"].append(off)
        words += words_read(model, conv, ep)
        heard += answers_heard(ep, sampled_voice(model, conv, steps, g), cfg.audio.samples_per_unit,
                               cfg.audio.sample_rate)
    colour_words = [w["colour_word"] for w in words if "colour_word" in w]
    return {"checkpoint": str(checkpoint), "preset": cfg.name, "split": split, "conversations": conversations,
            "units": units, "solver_steps": steps, "flow_error": {k: float(np.mean(v)) for k, v in errors.items()},
            "answers_heard": float(np.mean(heard)) if heard else None, "answers": len(heard),
            "chosen": float(np.mean([w["chosen"] for w in words])) if words else None,
            "colour_words": float(np.mean(colour_words)) if colour_words else None, "words": words}


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex eval voice", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder")
    p.add_argument("--conversations", type=int, default=8, help="conversations (seeds 0..n-1)")
    p.add_argument("--units", type=int, default=64, help="units a conversation (160 ms each)")
    p.add_argument("--steps", type=int, default=8, help="Euler steps of the sampled voice")
    p.add_argument("--split", choices=SPLITS, default="heldout",
                   help="train: training's voices, phrasings and backgrounds (what was learnt at all)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/...)")
    args = p.parse_args(argv)
    result = evaluate(args.checkpoint, args.conversations, args.units, args.steps, args.split)
    from bench.model_step import device_name, git_commit
    result.update(device=device_name(torch.device("cpu")), commit=git_commit(),
                  date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for k, v in result["flow_error"].items():
        print(f"audio flow error, {k}: {v:.3f}")
    if result["answers"]:
        print(f"answers heard right, sampled given the true past ({args.steps} Euler steps): "
              f"{result['answers_heard']:.0%} of {result['answers']}")
        print(f"answers chosen as planned (every byte where it chooses), teacher-forced: {result['chosen']:.0%}")
    if result["colour_words"] is not None:
        n = sum("colour_word" in w for w in result["words"])
        print(f"colour words read right, teacher-forced: {result['colour_words']:.0%} of {n}")
    out = args.out or RESULTS / (f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M}_eval-voice_{result['preset']}"
                                 f"{'_train' if args.split == 'train' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0
