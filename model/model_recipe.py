"""`duplex train --stage model`: the whole model learns the conversations, from a trained codec.

Reads top to bottom: config, data, model, loop. The Transformer, its heads and the user-side
encoder train on procedural conversations (model/data/: a user who speaks and holds up cards,
a character who greets, listens, answers and stops when cut in on), teacher-forced through the
block-causal training path (model/train.py: text cross-entropy + flow matching) with the
preset's streaming window, so training sees what a call sees. The VAE is the codec stage's
(`--codec`, a checkpoint folder) and stays frozen: the character's speech and face become the
latents the model learns to make, and decoding them is the codec's job.

Step n trains on the conversations of seeds (seed, n, i), generated on the fly (espeak-ng
utterances cached on disk by all their parameters), so the data position of a resume is the
step. A step sees `units` of each `episode_units`-long conversation: its start (the greeting,
as a call starts) one time in four, else a crop that ends just after one of the character's
answers (a 32-unit episode from the start is mostly greeting: 2 of 40 held a colour answer's
colour word). A crop's first window of units has less context than a call would give it, so
their losses do not count; what follows sees exactly what streaming sees (the window's rule). The run folder is model/run.py's; its checkpoint holds the whole model, codec included.

`probe_weight` adds model/train.py's Probes: the card's colour, the user's voice and the intent
being answered, read off the model's states at every unit (labels the episodes carry). Without
them the run before (1300 steps) spoke whole sentences but chose them regardless of the
question and the card. A new run first trains the encoder's video branch with the card probe
alone on camera frames for `card_steps` (3.6 minutes on 2 cores: whole-model steps see few cards).

`voice_weight` adds model/train.py's voice loss (the audio's flow error over the character's
voiced units): the shipped run (0) never learnt the voice; with 4 the judge hears answers, and
the captions and turns suffer (README, "The voice, measured and trained"). `stop_weight` adds
its "stop" loss (the silent units just after the character's speech: with the voice loss alone
it talked on past a cut-in), `words_weight` its "words" loss (the character's text bytes alone),
`choice_weight` its "choice" loss (the bytes where the character chooses what it says).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from model.checkpoint import load_checkpoint
from model.config import FRAMES_PER_UNIT, ModelConfig
from model.data import COLOUR_NAMES, Episode, MediaBatch, Synth, conversation, media_batch
from model.data.camera import Camera
from model.data.episode import P_NO_CARD
from model.data.media import video_tensor
from model.data.tables import BACKGROUNDS, CHARACTERS, INTENTS, choice_points
from model.duplex import DuplexModel, Latents, patchify
from model.run import RunRecipe, lr_scale, resume, run_steps
from model.train import PROBE_LOSSES, Conversation, Labels, Probes, train_step

LOSSES = ("text", "words", "flow", "voice", "stop", "choice")  # model/train.py's, without the probes'
TITLE = "whole-model training"
SEED_STRIDE = 1_000  # conversation seed of step n, item i: seed * 10^9 + n * 1000 + i


class ModelRecipe(RunRecipe):
    """Everything a whole-model run depends on (with RunRecipe's fields)."""
    codec: Path = Field(Path("checkpoints/demo-codec"), description="checkpoint folder of the codec stage (its VAE is used, frozen)")
    out: Path = Field(Path("runs/model"), description="run folder: train_state.pt, checkpoint/, loss.png, log.jsonl")
    seed: int = Field(0, description="conversations, initial weights, solver times and noise")
    units: int = Field(32, description="units a step trains on of each conversation (160 ms each: 5.1 s)")
    episode_units: int = Field(64, description="conversation length the crops are taken from")
    p_start: float = Field(0.25, ge=0, le=1, description="how often the crop is a conversation's start")
    probe_weight: float = Field(0.5, ge=0, description="weight of the Probes' losses (model/train.py; 0: none)")
    card_steps: int = Field(800, ge=0, description="a new run's warm-up: the video encoder and the card probe "
                            "alone, on camera frames (needs probe_weight > 0)")
    card_batch: int = Field(32, description="one-unit camera clips a warm-up step")
    voice_weight: float = Field(0.0, ge=0, description="weight of the audio's flow loss over the character's "
                                "voiced units alone, on top of the flow loss (model/train.py)")
    stop_weight: float = Field(0.0, ge=0, description="weight of the audio's flow loss over the silent units "
                               "just after the character's speech (model/train.py)")
    words_weight: float = Field(0.0, ge=0, description="weight of the text loss over the character's bytes "
                                "alone, on top of the text loss (model/train.py)")
    choice_weight: float = Field(0.0, ge=0, description="weight of the text loss over the bytes where the "
                                 "character chooses what it says (model/train.py)")
    context_noise: float = Field(0.6, ge=0, le=1, description="the character's speech and face the model "
                                 "sees as context: up to this share of noise (model/train.py)")
    compile: bool = Field(False, description="torch.compile the Transformer and the user-side encoder "
                          "(1.25x a step on the 2-core VM; their first step compiles, about 2 minutes)")
    batch: int = Field(2, description="conversations a step")
    lr: float = Field(3e-4, description="AdamW peak; linear warm-up, then cosine to lr / 10 at `steps`")
    steps: int = Field(1300, description="schedule length (the shipped run: 1300 steps, 105 min on 2 cores)")
    minutes: float = Field(120.0, description="wall-clock budget of this invocation")
    checkpoint_s: float = Field(300.0, description="seconds between saves")


# -- data -------------------------------------------------------------------------------------

def step_seeds(seed: int, step: int, batch: int) -> list[int]:
    return [(seed * 1_000_000 + step) * SEED_STRIDE + i for i in range(batch)]


@torch.no_grad()
def to_conversation(model: DuplexModel, mb: MediaBatch, device: torch.device) -> Conversation:
    """Media of a batch of episodes -> the model's inputs and targets: the character's
    speech and face through the (frozen) VAE to latent tokens, its portrait and voice to sinks."""
    vae, p = model.vae, model.cfg.video.patch
    B, N = mb.text.shape[:2]
    video, audio = vae.encode(mb.resp_frames.to(device), mb.resp_audio.to(device))  # (B, N, Cv, h, w), (B, 4N, Ca)
    resp_video = patchify(video.flatten(0, 1), p).unflatten(0, (B, N))
    resp_audio = audio.view(B, N, -1, audio.shape[-1])
    return Conversation(
        image=patchify(vae.encode_image(mb.image.to(device)), p),
        voice=vae.encode_audio(mb.voice.to(device)),
        persona=torch.cat([model.persona_ids(t) for t in mb.persona]),
        frames=mb.frames.to(device), audio=mb.audio.to(device), text=mb.text.to(device),
        resp=Latents(resp_video, resp_audio))


def labels(episodes: list[Episode]) -> Labels:
    """The Probes' targets of episodes (crops) of one length. The intent of a user turn labels
    the units from its end to the next user turn's start: the answer is chosen and said there.
    A unit none of whose frames shows the card is labelled "no card"."""
    N = episodes[0].units
    intent = torch.full((len(episodes), N), -1, dtype=torch.long)
    for b, e in enumerate(episodes):
        asked = [t for t in e.turns if t.speaker == "user"]
        for t, nxt in zip(asked, asked[1:] + [None]):
            end = N if nxt is None else nxt.start_unit
            intent[b, max(0, t.end_unit):max(0, min(N, end))] = INTENTS.index(t.intent)
    card = torch.tensor(np.stack([e.card for e in episodes]), dtype=torch.long)
    seen = torch.tensor(np.stack([(e.card_boxes[..., 0] >= 0).any(1) for e in episodes]))
    return Labels(card=torch.where((card >= 0) & seen, card, len(COLOUR_NAMES)),
                  speaking=torch.tensor(np.stack([e.user_speaking for e in episodes]), dtype=torch.float32),
                  intent=intent)


def choice_slots(episodes: list[Episode]) -> Tensor:
    """(B, N, k) bool: the text slots that hold the bytes where one of the character's answers
    (not its greeting) is chosen (tables.choice_points), for answers that start in the crop."""
    chosen = torch.zeros(len(episodes), *episodes[0].text.shape, dtype=torch.bool)
    for b, e in enumerate(episodes):
        for t in e.turns:
            if t.speaker == "character" and t.intent != "greet" and 0 <= t.start_unit < e.units:
                slots = e.text_slots(t)
                for n in choice_points(CHARACTERS[e.character], t.text):
                    if n < len(slots):
                        chosen[(b, *slots[n])] = True
    return chosen


def camera_clips(cfg: ModelConfig, rng: np.random.Generator, n: int) -> tuple[Tensor, Tensor]:
    """n one-unit clips of the user's camera as conversations draw it (train backgrounds, a card
    or, one time in five, none; a random moment): frames (n, 4, 3, H, W) and card labels (n,)."""
    clips, cards = [], []
    for _ in range(n):
        card = None if rng.random() < P_NO_CARD else COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
        background = BACKGROUNDS["train"][int(rng.integers(len(BACKGROUNDS["train"])))]
        cam, i0 = Camera(rng, cfg.video.height, cfg.video.width, background, card), int(rng.integers(0, 300))
        clips.append(video_tensor(np.stack([cam.frame(i0 + j)[0] for j in range(FRAMES_PER_UNIT)])[None]))
        cards.append(len(COLOUR_NAMES) if card is None else COLOUR_NAMES.index(card))
    return torch.stack(clips), torch.tensor(cards)


def warm_up_card(model: DuplexModel, probes: Probes, r: ModelRecipe, device: torch.device) -> list[float]:
    """`card_steps` steps of the video encoder and the card probe alone (their own optimiser);
    returns the losses."""
    video = model.encoder.video
    opt = torch.optim.AdamW(list(video.parameters()) + list(probes.card.parameters()), lr=1e-3)
    rng, curve = np.random.default_rng([r.seed, 0xCA4D]), []
    for _ in range(r.card_steps):
        frames, cards = camera_clips(model.cfg, rng, r.card_batch)
        tokens = video(frames.to(device))[:, 0].flatten(2).transpose(1, 2)  # (n, Ov, obs_dim)
        loss = F.cross_entropy(probes.card_logits(tokens), cards.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


def crop_start(e: Episode, units: int, p_start: float) -> int:
    """Where the step's crop of `e` starts: 0 (a call's start) with probability p_start (or
    when no answer ends inside), else so that it ends 0-3 units after an answer ends."""
    rng = np.random.default_rng([e.seed, 0xC5])
    ends = [t.end_unit for t in e.turns if t.speaker == "character" and t.intent != "greet"
            and units <= t.end_unit <= e.units]
    if not ends or rng.random() < p_start:
        return 0
    end = min(e.units, ends[int(rng.integers(len(ends)))] + int(rng.integers(0, 4)))
    return end - units


def batch_at(model: DuplexModel, r: ModelRecipe, synth: Synth, step: int, device: torch.device) -> Conversation:
    episodes = [conversation(s, model.cfg, "train", r.episode_units, synth=synth)
                for s in step_seeds(r.seed, step, r.batch)]
    starts = [crop_start(e, r.units, r.p_start) for e in episodes]
    crops = [e.crop(s, r.units) for e, s in zip(episodes, starts)]
    conv = to_conversation(model, media_batch(crops, model.cfg, synth), device)
    warm = torch.arange(r.units) >= model.cfg.window_units  # a crop's units with a full window
    conv.scored = torch.stack([warm | (s == 0) for s in starts]).to(device)
    conv.labels = Labels(*(x.to(device) for x in vars(labels(crops)).values()))
    conv.voiced = torch.tensor(np.stack([c.char_speaking for c in crops])).to(device)
    conv.choosing = choice_slots(crops).to(device)
    return conv


# -- the run ----------------------------------------------------------------------------------

def train(r: ModelRecipe) -> dict:
    device = r.torch_device()
    model = load_checkpoint(r.codec, device=device, dtype=torch.float32)
    torch.manual_seed(r.seed)
    model.vae.requires_grad_(False)
    probes = Probes(model.cfg).to(device) if r.probe_weight > 0 else None
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params + ([] if probes is None else list(probes.parameters())),
                            lr=r.lr, betas=(0.9, 0.95), weight_decay=0.01)
    step, history, elapsed = resume(r.out, model, opt, device, probes)
    if step == 0 and probes is not None and r.card_steps:
        t0 = time.monotonic()
        curve = warm_up_card(model, probes, r, device)
        elapsed += time.monotonic() - t0
        print(f"card warm-up: {r.card_steps} steps, loss {np.mean(curve[:10]):.3f} -> {np.mean(curve[-10:]):.3f} "
              f"({elapsed / 60:.1f} min)")
    if r.compile:  # in place: the state dict's names stay the checkpoint's
        model.transformer.compile(dynamic=False)
        model.encoder.compile(dynamic=False)
    synth = Synth(r.cache)
    g = torch.Generator()
    print(f"model: preset {model.cfg.name}, {sum(p.numel() for p in params) / 1e6:.2f} M trained parameters "
          f"(VAE frozen), {r.batch} conversations of {r.units} units a step")

    weights = {"voice": r.voice_weight, "stop": r.stop_weight, "words": r.words_weight,
               "choice": r.choice_weight} \
        | {k: r.probe_weight for k in PROBE_LOSSES}

    def one_step(step: int) -> dict[str, float]:
        t0 = time.monotonic()
        conv = batch_at(model, r, synth, step, device)
        t_data = time.monotonic() - t0
        g.manual_seed(r.seed * 1_000_003 + step)  # times and noise of step n: a resume replays none
        for group in opt.param_groups:
            group["lr"] = r.lr * lr_scale(step, r.warmup, r.steps)
        parts = train_step(model, opt, conv, g, r.context_noise, probes, weights)
        return {"loss": parts["text"] + parts["flow"], **parts,
                "data_s": t_data, "step_s": time.monotonic() - t0}

    probed = PROBE_LOSSES if probes is not None else ()
    shown = LOSSES + tuple(k for k in probed if k != "speaking") + ("step_s",)  # the log line
    return run_steps(r, model, opt, step, history, elapsed, one_step, shown, 10, ("loss",) + LOSSES + probed,
                     TITLE, probes)
