"""`duplex eval model --checkpoint C`: does the character listen, watch and answer?

Held-out conversations (model/data/, split "heldout": voices, phrasings and backgrounds that
training never draws) go through the streaming API unit by unit as the daemon runs them
(observe, speak, denoise at a rung of the quality ladder, commit, decode; the character loaded
from its folder as the daemon loads it), and what the character did is judged against the
episode's labels:

| behaviour   | measured                                                                  | target |
| answers     | pocketsphinx, with a grammar of every answer the character can give, on   | >= 90 % |
|             | its audio over each answer's units, names the answer the episode planned  |         |
| captions    | character error rate of the text slots' bytes over each answer            | <= 10 % |
| turn-taking | units from the user's stop to the character's first voiced unit, median / p90 | <= 2 / 4 |
| listening   | units where the user speaks and the character should not: silent          | >= 95 % |
| barge-in    | units from the user's onset over an answer to the character's silence     | <= 2 in >= 90 % |
| lip-sync    | correlation of the mouth's darkness (against the portrait, after finding  | >= 0.6 |
|             | the head's shift) with the audio's RMS, frame by frame                    |         |
| a face      | correlation of each frame with the character's portrait                   | >= 0.8 in >= 95 % |
Beside them, no target: `caption_answers`, the answer grammar's entry nearest each answer's
captions by edit distance is the planned one (text right, whatever the voice does); and for
each answer, under "asked", what was planned, what the captions said and what the judge heard.

`judge(episode, played)` is a pure function; `--oracle` judges the episodes' own media (the
ground truth passes every target: the test of the judges), `--checkpoint dummy` a seeded
untrained model, `--teacher-text` the model with the episodes' own text in its text slots
(splits a wrong answer into wrong words and a voice the judge cannot hear). Prints the table, writes JSON and a PNG timeline of the first conversation
to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench.judges import pick
from model.config import FRAMES_PER_UNIT, PAD, ModelConfig
from model.data import CHARACTERS, Episode, Synth, conversation
from model.data.episode import Turn
from model.data.face import FaceRenderer
from model.data.tables import repertoire
from model.flow import Rung
from model.media import frames_to_model, frames_to_uint8
from model.streaming import Character, Streamer

RESULTS = Path(__file__).parent / "results"
VOICED_RMS = 0.01  # -40 dBFS: a unit louder than this is the character speaking (its voice is -20)
TURN_LIMIT = 10  # units; a character that never answers counts as this late
TARGETS = {"answers": 0.90, "captions_cer": 0.10, "turn_median": 2, "turn_p90": 4, "listening": 0.95,
           "barge_in": 0.90, "lip_sync": 0.6, "face_frames": 0.95}
FACE_MIN_CORR = 0.8
BARGE_IN_UNITS = 2


@dataclass
class Played:
    """What the character did in one conversation: text tokens (N, k), audio (N * S,) at the
    model's rate, frames (N, 4, H, W, 3) uint8."""
    text: np.ndarray
    audio: np.ndarray
    frames: np.ndarray


# -- playing a conversation through the streaming API ------------------------------------------

def play(streamer: Streamer, ep: Episode, character: Character, rung: Rung | None, seed: int,
         teacher_text: bool = False) -> Played:
    """The daemon's per-unit order: observe, speak, denoise, commit, decode. `teacher_text`:
    the text slots take the episode's own text (the voice and face judged given the right
    words: what is left of a failure then is the audio-video side's)."""
    state = streamer.new_state()
    streamer.prefill(state, character)
    g = torch.Generator().manual_seed(seed)
    dtype = streamer.model.text_head.weight.dtype
    text, audio, frames = [], [], []
    for n in range(ep.units):
        streamer.observe(state, frames_to_model(torch.from_numpy(ep.user_frames[n][None]), dtype),
                         torch.from_numpy(ep.user_audio[n][None]).to(dtype))
        tokens, _ = streamer.speak(state, torch.from_numpy(ep.text[n][None]) if teacher_text else None)
        z = streamer.denoise(state.cache, state.unit, streamer.sample_noise(1, g), rung)
        streamer.commit(state, z)
        f, a = streamer.decode(state, z)
        text.append(tokens[0].numpy())
        audio.append(a[0].float().clamp(-1, 1).numpy())
        frames.append(frames_to_uint8(f)[0].numpy())
    return Played(np.stack(text), np.concatenate(audio), np.stack(frames))


def oracle(ep: Episode) -> Played:
    """The episode's own character media: what a perfect model would do."""
    return Played(ep.text, ep.char_audio.reshape(-1), ep.char_frames)


# -- the judges -------------------------------------------------------------------------------

def normalise(s: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", s.lower()).split())


def answer_texts(character: str) -> tuple[str, ...]:
    """Every answer and greeting the character can say, normalised: the answer grammar."""
    spec = CHARACTERS[character]
    return tuple(sorted({normalise(t) for t in spec.greetings + repertoire(spec)}))


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def voiced(audio: np.ndarray, samples_per_unit: int) -> np.ndarray:
    units = audio[:len(audio) // samples_per_unit * samples_per_unit].reshape(-1, samples_per_unit)
    return np.sqrt(np.mean(units.astype(np.float64) ** 2, 1)) > VOICED_RMS


HEAD_SHIFT = 3  # pixels the drawn head moves at most (model/data/face.py: 2 % of the width)


def mouth_box(character: str, cfg: ModelConfig) -> tuple[slice, slice]:
    """The pixels the character's open mouth covers at the preset's size, head at rest."""
    face = FaceRenderer(CHARACTERS[character], np.random.default_rng(0), cfg.video.height, cfg.video.width, 1)
    (y, x), ry, rx = face.mouth, face.mouth_ry * 1.3 + 1, face.mouth_rx + 1
    return slice(max(0, int(y - ry + 0.3 * ry)), int(y + ry + 0.3 * ry) + 1), slice(max(0, int(x - rx)), int(x + rx) + 1)


def mouth_openness(frames: np.ndarray, image: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """(T,) how much darker than the portrait the mouth is in each frame (T, H, W, 3): the
    head's shift is found first (the whole-pixel translation of the portrait nearest the frame)."""
    from model.data.draw import shift
    ref = image.astype(np.float64)
    shifts = [(dy, dx) for dy in range(-HEAD_SHIFT, HEAD_SHIFT + 1) for dx in range(-HEAD_SHIFT, HEAD_SHIFT + 1)]
    moved = np.stack([shift(ref, dy, dx) for dy, dx in shifts])  # (S, H, W, 3)
    grey = moved.mean(-1).reshape(len(shifts), -1)  # the shift is found on grey levels
    out = np.empty(len(frames))
    ys, xs = box
    for i, f in enumerate(frames.astype(np.float64)):
        k = int(np.argmin(((grey - f.mean(-1).reshape(-1)) ** 2).sum(1)))
        dy, dx = shifts[k]
        region = f[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
        out[i] = (moved[k][ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx] - region).mean()
    return out


def answer_spans(ep: Episode) -> list[tuple[Turn, tuple[int, int]]]:
    """The answers finished within the episode (a cut one is judged as a barge-in), each with
    the units it is judged over: from 2 before it to 3 after."""
    return [(t, (max(0, t.start_unit - 2), min(ep.units, t.end_unit + 3))) for t in ep.turns
            if t.speaker == "character" and t.intent != "greet" and not t.cut and t.end_unit <= ep.units]


def judge(ep: Episode, played: Played, cfg: ModelConfig, image: np.ndarray) -> dict:
    """One conversation's measurements (lists, pooled over conversations by `summarise`).
    `image` is the portrait (H, W, 3) uint8 the character was prefilled with."""
    spu, rate = cfg.audio.samples_per_unit, cfg.audio.sample_rate
    on = voiced(played.audio, spu)
    grammar = answer_texts(ep.character)
    out: dict[str, list] = {"answers": [], "colour_answers": [], "caption_answers": [], "cer": [], "turn": [],
                            "listening": [], "barge_in": [], "face": [], "asked": []}
    for t, (a, b) in answer_spans(ep):
        heard = pick(played.audio[a * spu:b * spu], rate, grammar)
        out["answers"].append(heard == normalise(t.text))
        if t.intent == "colour":
            out["colour_answers"].append(heard == normalise(t.text))
        said = bytes(int(c) for c in played.text[a:b].reshape(-1) if c < PAD).decode(errors="replace")
        out["cer"].append(edit_distance(said, t.spoken) / max(1, len(t.spoken)))
        out["asked"].append({"intent": t.intent, "planned": t.spoken, "captions": said, "heard": heard})
        # the captions' answer: the grammar's answer nearest the text (the audio judge's rule on
        # the text slots: right text with a wrong voice shows here and not in `answers`)
        caption = normalise(said)
        out["caption_answers"].append(min(grammar, key=lambda g: edit_distance(caption, g)) == normalise(t.text))
    for stop, _ in ep.answers:
        later = np.flatnonzero(on[stop:stop + TURN_LIMIT])
        out["turn"].append(int(later[0]) if later.size else TURN_LIMIT)
    quiet = ep.user_speaking & ~ep.char_speaking
    out["listening"] = [bool(not on[u]) for u in np.flatnonzero(quiet)]
    for onset, _ in ep.barge_ins:
        silent = np.flatnonzero(~on[onset:onset + TURN_LIMIT])
        out["barge_in"].append(int(silent[0]) if silent.size else TURN_LIMIT)
    frames = played.frames.reshape(-1, *played.frames.shape[2:])
    darkness = mouth_openness(frames, image, mouth_box(ep.character, cfg))
    per_frame = played.audio[:len(frames) * (spu // FRAMES_PER_UNIT)].reshape(len(frames), -1)
    rms = np.sqrt(np.mean(per_frame.astype(np.float64) ** 2, 1))
    out["lip_sync"] = float(np.corrcoef(darkness, rms)[0, 1]) if darkness.std() > 0 and rms.std() > 0 else 0.0
    ref = image.astype(np.float64).mean(-1)
    ref = (ref - ref.mean()) / (ref.std() + 1e-9)
    for f in frames.astype(np.float64).mean(-1):
        out["face"].append(float(((f - f.mean()) / (f.std() + 1e-9) * ref).mean()))
    return out


def summarise(judged: list[dict]) -> dict:
    def pool(key: str) -> list:
        return [v for j in judged for v in j[key]]
    turn, face, barge = pool("turn"), pool("face"), pool("barge_in")
    s = {"answers": float(np.mean(pool("answers"))) if pool("answers") else None,
         "colour_answers": float(np.mean(pool("colour_answers"))) if pool("colour_answers") else None,
         "caption_answers": float(np.mean(pool("caption_answers"))) if pool("caption_answers") else None,
         "captions_cer": float(np.mean(pool("cer"))) if pool("cer") else None,
         "turn_median": float(np.median(turn)) if turn else None,
         "turn_p90": float(np.percentile(turn, 90)) if turn else None,
         "listening": float(np.mean(pool("listening"))) if pool("listening") else None,
         "barge_in": float(np.mean([b <= BARGE_IN_UNITS for b in barge])) if barge else None,
         "lip_sync": float(np.mean([j["lip_sync"] for j in judged])),
         "face_frames": float(np.mean([f >= FACE_MIN_CORR for f in face])) if face else None,
         "counts": {"answers": len(pool("answers")), "turns": len(turn), "barge_ins": len(barge),
                    "listening_units": len(pool("listening")), "frames": len(face)}}
    s["passed"] = {k: passes(k, s[k]) for k in TARGETS}
    return s


def passes(key: str, value: float | None) -> bool:
    if value is None:
        return False
    lower_is_better = key in ("captions_cer", "turn_median", "turn_p90")
    return value <= TARGETS[key] if lower_is_better else value >= TARGETS[key]


ROWS = (("answers", "answers right (answer grammar)", ">= 90 %"),
        ("captions_cer", "captions: character error rate", "<= 10 %"),
        ("turn_median", "turn-taking: units to answer, median", "<= 2"),
        ("turn_p90", "turn-taking: units to answer, p90", "<= 4"),
        ("listening", "listening: silent while the user speaks", ">= 95 %"),
        ("barge_in", "barge-in: silent within 2 units", ">= 90 %"),
        ("lip_sync", "lip-sync: mouth vs audio correlation", ">= 0.6"),
        ("face_frames", "a face: frames correlating >= 0.8", ">= 95 %"),
        ("caption_answers", "(captions name the right answer)", "-"))


def print_table(result: dict) -> None:
    print(f"conversation eval: {result['checkpoint']} ({result['preset']}), {result['conversations']} held-out "
          f"conversations of {result['units']} units")
    rungs = list(result["rungs"])
    print(f"{'behaviour':<42}{'target':>10}" + "".join(f"{r:>14}" for r in rungs))
    for key, name, target in ROWS:
        cells = []
        for r in rungs:
            v, ok = result["rungs"][r]["summary"][key], result["rungs"][r]["summary"]["passed"].get(key)
            cells.append("-" if v is None else f"{v:.2f}" + ("" if ok is None else " ok" if ok else " NO"))
        print(f"{name:<42}{target:>10}" + "".join(f"{c:>14}" for c in cells))


def plot_timeline(ep: Episode, played: Played, cfg: ModelConfig, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    spu = cfg.audio.samples_per_unit
    units = np.arange(ep.units)
    def level(x: np.ndarray) -> np.ndarray:
        return 20 * np.log10(np.sqrt(np.mean(x.reshape(ep.units, spu).astype(np.float64) ** 2, 1)) + 1e-5)
    fig, ax = plt.subplots(3, 1, figsize=(11, 6), sharex=True)
    ax[0].step(units, level(ep.user_audio.reshape(-1)), where="post", label="user audio (dBFS)")
    ax[0].step(units, level(played.audio), where="post", label="character audio (dBFS)")
    ax[0].axhline(20 * np.log10(VOICED_RMS), color="grey", lw=0.5)
    ax[0].legend(loc="upper right", fontsize=8)
    ax[1].fill_between(units, ep.user_speaking, step="post", alpha=0.4, label="user speaks (label)")
    ax[1].fill_between(units, ep.char_speaking * 0.8, step="post", alpha=0.4, label="character speaks (label)")
    ax[1].step(units, voiced(played.audio, spu) * 0.6, where="post", color="k", label="character voiced (output)")
    ax[1].legend(loc="upper right", fontsize=8)
    for u in units:
        s = bytes(int(c) for c in played.text[u] if c < PAD).decode(errors="replace")
        if s.strip():
            ax[2].text(u, 0.5, s, fontsize=6, rotation=90, va="center")
    ax[2].set_ylabel("text slots")
    ax[2].set_xlabel("unit (160 ms)")
    ax[0].set_title(f"conversation {ep.seed} ({ep.character}, card {ep.card_colour})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def portrait_u8(character: Character) -> np.ndarray:
    return ((character.image.permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


RUNG_CHOICES = ("all", "top", "lowest")


class RungNotInLadder(ValueError):
    """--rungs names a number of Euler steps the checkpoint's ladder lacks."""


def pick_rungs(ladder: tuple[Rung, ...], which: str) -> list[Rung]:
    """`which` (as rung_choice passed it): "all", "top", "lowest", or a number of Euler steps
    (the rung a server is served with: it need not be the top one)."""
    if which in RUNG_CHOICES:
        return list(ladder) if which == "all" else [ladder[0] if which == "top" else ladder[-1]]
    picked = [r for r in ladder if str(r) == f"{which} euler"]
    if not picked:
        raise RungNotInLadder(f"--rungs {which}: this checkpoint's ladder has {', '.join(str(r) for r in ladder)} "
                              f"(its config's solver steps and fewer)")
    return picked


def rung_choice(value: str) -> str:
    """argparse type of --rungs (pick_rungs checks a number against the model's ladder)."""
    if value in RUNG_CHOICES or (value.isdigit() and int(value) > 0):
        return value
    raise argparse.ArgumentTypeError(f"{value!r}: one of {', '.join(RUNG_CHOICES)} or a number of Euler steps")


def evaluate(checkpoint: str, conversations: int, units: int, rungs: str, oracle_only: bool = False,
             characters_dir: Path | None = None, teacher_text: bool = False
             ) -> tuple[dict, tuple[Episode, Played], ModelConfig]:
    """The result (per rung: the summary and each conversation's measurements), the first
    conversation played (for the timeline), and the model's config."""
    from server.frontend.characters import load_character
    from server.settings import SHIPPED_CHARACTERS
    from model.checkpoint import load_checkpoint
    from model.config import preset
    from model.duplex import build_model
    if checkpoint == "dummy" or oracle_only:
        model = build_model(preset("demo"), seed=0)
    else:
        model = load_checkpoint(checkpoint, dtype=torch.float32)
    cfg, synth = model.cfg, Synth()
    streamer = Streamer(model)
    folder = characters_dir or SHIPPED_CHARACTERS
    chars = {cid: load_character(folder / cid, cfg).character for cid in CHARACTERS}
    episodes = [conversation(seed, cfg, "heldout", units, synth=synth) for seed in range(conversations)]
    ladder = {"oracle": None} if oracle_only else {str(r): r for r in pick_rungs(streamer.ladder, rungs)}
    result = {"checkpoint": "oracle" if oracle_only else str(checkpoint), "preset": cfg.name,
              "conversations": conversations, "units": units, "teacher_text": teacher_text, "rungs": {}}
    first = None
    for name, rung in ladder.items():
        judged = []
        for ep in episodes:
            played = oracle(ep) if oracle_only else play(streamer, ep, chars[ep.character], rung, ep.seed,
                                                         teacher_text)
            judged.append(judge(ep, played, cfg, portrait_u8(chars[ep.character])))
            first = first or (ep, played)
        result["rungs"][name] = {"summary": summarise(judged), "conversations": judged}
    return result, first, cfg


def eval_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="duplex eval model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder, or 'dummy' (seeded demo weights)")
    p.add_argument("--conversations", type=int, default=20, help="held-out conversations (seeds 0..n-1)")
    p.add_argument("--units", type=int, default=64, help="units a conversation (160 ms each)")
    p.add_argument("--rungs", default="all", type=rung_choice,
                   help="quality-ladder rungs to run: all, top, lowest, or a number of Euler steps (e.g. 2)")
    p.add_argument("--oracle", action="store_true", help="judge the episodes' own media (calibrates the judges)")
    p.add_argument("--teacher-text", action="store_true",
                   help="feed the episodes' own text into the text slots: the voice judged given the right words")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/...)")
    args = p.parse_args(argv)
    try:
        result, (ep, played), cfg = evaluate(args.checkpoint, args.conversations, args.units, args.rungs,
                                             args.oracle, teacher_text=args.teacher_text)
    except RungNotInLadder as e:
        p.error(str(e))
    from bench.model_step import device_name, git_commit
    result.update(host=platform.node(), device=device_name(torch.device("cpu")), commit=git_commit())
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print_table(result)
    tag = "_oracle" if args.oracle else "_teacher-text" if args.teacher_text else ""
    stem = f"{datetime.now(timezone.utc):%Y-%m-%d_%H%M}_eval-model_{result['preset']}{tag}"
    out = args.out or RESULTS / f"{stem}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    plot_timeline(ep, played, cfg, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
