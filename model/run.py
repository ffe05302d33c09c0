"""`duplex train --stage codec|model`, and what every stage shares: the learning-rate schedule, the run folder (a
resumable state, the shipped checkpoint, a loss curve, a log line a run), and a recipe's flags.

A run folder holds `train_state.pt` (model, training-only heads if the stage has any,
optimiser, step, torch RNG, loss history, minutes trained, the recipe), `checkpoint/` (model/checkpoint.py, float16: the form that ships) and
`loss.png`. Every stage draws step n's data from generators seeded by (seed, n), so the data
position of a resume is the step, and a killed run started again with the same folder
continues where its last save stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field

from model.checkpoint import save_checkpoint
from model.duplex import DuplexModel

STATE = "train_state.pt"


class RunRecipe(BaseModel):
    """The fields every stage's recipe has (a stage redeclares those whose defaults differ);
    `duplex train --stage S --help` lists each field as a flag."""
    model_config = ConfigDict(frozen=True, extra="forbid")
    out: Path = Field(Path("runs/run"), description="run folder: train_state.pt, checkpoint/, loss.png, log.jsonl")
    cache: Path = Field(Path.home() / ".cache" / "duplex" / "speech",
                        description="espeak-ng utterances, shared by runs")
    seed: int = Field(0, description="data, initial weights and noise")
    lr: float = Field(1e-3, description="AdamW peak; linear warm-up, then cosine to lr / 10 at `steps`")
    warmup: int = Field(100, description="warm-up steps")
    steps: int = Field(1000, description="schedule length")
    minutes: float = Field(60.0, description="wall-clock budget of this invocation")
    stop_after: int | None = Field(None, description="end this invocation at this step (the schedule still spans `steps`)")
    checkpoint_s: float = Field(180.0, description="seconds between saves")
    device: str = Field("cpu", description="cpu or cuda")
    threads: int | None = Field(None, description="torch threads on CPU (default: torch's)")

    def torch_device(self) -> torch.device:
        """The run's device, with torch's threads and denormal handling set for it."""
        torch.set_flush_denormal(True)  # denormals slowed CPU training 2.4x in the feasibility run
        if self.threads:
            torch.set_num_threads(self.threads)
        return torch.device(self.device)


def run_steps(r: RunRecipe, model: DuplexModel, opt: torch.optim.Optimizer, step: int, history: list[dict],
              elapsed: float, one_step: Callable[[int], dict[str, float]], shown: tuple[str, ...],
              log_every: int, curves: tuple[str, ...], title: str, heads: torch.nn.Module | None = None) -> dict:
    """The loop every stage runs: `one_step(step)` (its measurements, "loss" among them) until
    the schedule, `stop_after` or the invocation's minutes end; a progress bar showing `shown`;
    the history every `log_every` steps; the run folder saved every `checkpoint_s` and at the
    end (with `heads`, training-only weights kept in the run's state, not in its checkpoint).
    Returns the run's summary (`finish`)."""
    from tqdm import tqdm
    start = last_save = time.monotonic()
    bar = tqdm(total=r.steps, initial=step, desc=title, unit="step")
    last = min(r.steps, r.stop_after or r.steps)
    parts: dict[str, float] = {}
    while step < last and time.monotonic() - start < r.minutes * 60:
        parts = one_step(step)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{parts[k]:.3f}" for k in shown})
        if step % log_every == 0 or step == 1:
            history.append({"step": step, **parts, "minutes": (elapsed + time.monotonic() - start) / 60})
        if time.monotonic() - last_save > r.checkpoint_s:
            save_run(r.out, r, model, opt, step, history, elapsed + time.monotonic() - start, curves, title, heads)
            last_save = time.monotonic()
    bar.close()
    elapsed += time.monotonic() - start
    if parts and history[-1]["step"] != step:  # the last step, if this invocation ran any
        history.append({"step": step, **parts, "minutes": elapsed / 60})
    save_run(r.out, r, model, opt, step, history, elapsed, curves, title, heads)
    return finish(r.out, step, history, elapsed)


def lr_scale(step: int, warmup: int, steps: int) -> float:
    """The schedule as a fraction of the peak: linear warm-up, then a cosine to 1/10 at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, steps - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))


def save_run(out: Path, recipe: BaseModel, model: DuplexModel, opt: torch.optim.Optimizer, step: int,
             history: list[dict], elapsed: float, curves: tuple[str, ...], title: str,
             heads: torch.nn.Module | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (STATE + ".tmp")
    torch.save({"recipe": recipe.model_dump(mode="json"), "model": model.state_dict(),
                "opt": opt.state_dict(), "step": step, "rng": torch.get_rng_state(),
                "history": history, "elapsed": elapsed,
                "heads": None if heads is None else heads.state_dict()}, tmp)
    tmp.replace(out / STATE)
    save_checkpoint(model, out / "checkpoint", dtype=torch.float16)  # the shipped form: half the bytes
    plot_losses(history, curves, out / "loss.png", title)


def resume(out: Path, model: DuplexModel, opt: torch.optim.Optimizer, device: torch.device,
           heads: torch.nn.Module | None = None) -> tuple[int, list[dict], float]:
    """(step, history, minutes trained in seconds) of the run in `out`, loaded into model,
    heads and opt; (0, [], 0.0) for a new run."""
    if not (out / STATE).exists():
        return 0, [], 0.0
    state = torch.load(out / STATE, map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    if heads is not None:
        heads.load_state_dict(state["heads"])
    opt.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    print(f"resumed {out / STATE} at step {state['step']} ({state['elapsed'] / 60:.1f} min trained)")
    return state["step"], state["history"], state["elapsed"]


def plot_losses(history: list[dict], curves: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not history:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [h["step"] for h in history]
    for key in curves:
        ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title} ({history[-1]['minutes']:.1f} min)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def finish(out: Path, step: int, history: list[dict], elapsed: float) -> dict:
    """The run's summary: printed, appended to `log.jsonl`, returned."""
    summary = {"step": step, "minutes": elapsed / 60,
               "first_loss": history[0]["loss"] if history else None,
               "last_loss": history[-1]["loss"] if history else None,
               "checkpoint": str(out / "checkpoint")}
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(json.dumps(summary))
    return summary


def add_recipe_flags(p: argparse.ArgumentParser, recipe: type[BaseModel]) -> None:
    """A --flag for each field of the recipe, with its description and default."""
    for name, field in recipe.model_fields.items():
        default, flag = field.default, "--" + name.replace("_", "-")
        text = f"{field.description} (default {default})"
        if isinstance(default, bool):  # --compile / --no-compile
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        kind = Path if isinstance(default, Path) else str if isinstance(default, str) else (
            float if isinstance(default, float) else int)
        p.add_argument(flag, type=kind, default=default, help=text)


STAGES = {"codec": ("model.codec_recipe", "CodecRecipe"), "model": ("model.model_recipe", "ModelRecipe")}


def main(argv: list[str] | None = None) -> int:
    import importlib
    import sys
    argv = sys.argv[1:] if argv is None else argv
    stage = argparse.ArgumentParser(add_help=False)
    stage.add_argument("--stage", choices=sorted(STAGES), default="codec")
    which = stage.parse_known_args(argv)[0].stage
    module = importlib.import_module(STAGES[which][0])
    recipe = getattr(module, STAGES[which][1])
    p = argparse.ArgumentParser(prog="duplex train", description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=sorted(STAGES), default="codec",
                   help="codec: the VAE (speech and faces); model: the whole model on the "
                        "conversations, from a trained codec")
    add_recipe_flags(p, recipe)
    args = vars(p.parse_args(argv))
    args.pop("stage")
    module.train(recipe(**args))
    return 0
