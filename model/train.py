"""Teacher forcing: the whole conversation in one forward under the block-causal mask, the
loss (text cross-entropy + flow-matching MSE) and one optimiser step.

The sequence is [sinks] + per unit [obs, text, clean resp, noisy resp]: clean resp is the
context later units see, the noisy copy (seen by nobody else) carries the flow loss. This is
the same computation as the streaming path unit by unit (tests/model/test_streaming.py).

`context_noise` > 0 blurs the clean resp context (each unit's by its own amount, up to that
share of noise) while the targets stay clean: in a call that context is the model's own
samples, and a model that read its next text bytes off the exact speech of the units before
(teacher-forced byte accuracy 95 %, its own speech in context: babble) must learn to read its
text instead.

Beyond text and flow, `losses` gives parts a recipe may weight: "words", the text
cross-entropy over the character's bytes alone (the text loss is a mean over slots that are
mostly PAD, so the few bytes that name an answer weigh little in it); "voice", the audio's flow
error over the units where the character speaks; "stop", the same over the STOP_UNITS silent
units after it stops (where a cut-in leaves it: the voice loss alone teaches speech, not when it
ends); "choice", the same over the bytes where the character chooses what it says (the first,
and the colour's after "That card is ": tables.choice_points). In "words" they are 1-3 bytes
of an answer's 9-45; teacher-forced, the shipped run began 9 of 20 answers with the wrong first
byte, on training phrasings too, and read wrong only bytes where it chooses (`duplex eval voice`).
Weighted 4 it left every other loss higher and no answer heard (README).

`Probes` are training-only heads (not in the checkpoint) that read the user's side off the
model's states, from labels the episodes carry: the card's colour off the encoder's video
tokens (their maximum over the grid: in their mean a small card is lost, and a probe on it
did not learn), the user's voice off its audio tokens, the intent of the question being answered off the
first text slot. The text loss reaches intent and colour only through a few answer bytes; the
probes give both a dense signal at every unit.
Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.attention import SparseMask
from model.config import BOS, PAD, ModelConfig, UnitLayout
from model.data.tables import COLOUR_NAMES, INTENTS
from model.duplex import DuplexModel, Latents
from model.flow import flow_error, noisy, sample_train_time
from model.layout import Geometry, block_causal_mask, sequence_meta


@dataclass
class Labels:
    """What the user shows and says, per unit: the Probes' targets."""
    card: Tensor  # (B, N) int64 index in COLOUR_NAMES, len(COLOUR_NAMES) when no card is shown
    speaking: Tensor  # (B, N) float 1.0 where the user's voice is in the unit
    intent: Tensor  # (B, N) int64 index in INTENTS of the user turn being answered, -1 elsewhere


@dataclass
class Conversation:
    """A batch of N-unit conversations, as the model's inputs and targets."""
    image: Tensor  # (B, Si, Cv p^2) character image tokens
    voice: Tensor  # (B, Sv, Ca) character voice latents
    persona: Tensor  # (B, Sp) persona byte ids
    frames: Tensor  # (B, 4N, 3, H, W) the user's video, in [-1, 1]
    audio: Tensor  # (B, N * samples_per_unit) the user's audio
    text: Tensor  # (B, N, k) the avatar's text slots (bytes, PAD when silent): targets
    resp: Latents  # clean response tokens, video (B, N, Rv, Cv p^2), audio (B, N, Ra, Ca)
    scored: Tensor | None = None  # (B, N) bool: units whose losses count (None: all)
    voiced: Tensor | None = None  # (B, N) bool: units where the character speaks (the "voice" loss)
    choosing: Tensor | None = None  # (B, N, k) bool: text slots where an answer is chosen (the "choice" loss)
    labels: Labels | None = None  # the Probes' targets (None: no probe losses)

    @property
    def units(self) -> int:
        return self.text.shape[1]


def text_inputs(text: Tensor) -> Tensor:
    """Next-token inputs of the text slots: the stream shifted right by one, BOS first."""
    B = text.shape[0]
    flat = text.reshape(B, -1)
    shifted = torch.cat([torch.full((B, 1), BOS, dtype=flat.dtype, device=flat.device), flat[:, :-1]], 1)
    return shifted.view_as(text)


STOP_UNITS = 3  # silent units after the character's speech that the "stop" loss covers


def just_stopped(voiced: Tensor) -> Tensor:
    """(B, N) bool: silent units with a voiced one among the STOP_UNITS before them."""
    before = torch.zeros_like(voiced)
    for d in range(1, STOP_UNITS + 1):
        before[:, d:] |= voiced[:, :-d]
    return before & ~voiced


ATTENTION_BLOCK = 64  # query rows that share one gathered set of keys (attention.SparseMask)


class Outputs(NamedTuple):
    logits: Tensor  # (B, N, k, V) text logits
    velocity: Latents  # of the noisy copies, like conv.resp
    obs_video: Tensor  # (B, N, Ov, obs_dim) the encoder's video tokens
    obs_audio: Tensor  # (B, N, Oa, obs_dim) its audio tokens
    first_text: Tensor  # (B, N, D) final hidden state of each unit's first text slot


@lru_cache(maxsize=4)
def sequence_attention(lay: UnitLayout, geo: Geometry, units: int, window: int | None,
                       device: torch.device) -> tuple[Tensor, SparseMask]:
    """The training sequence's positions and its mask, the same for every step of a run: built
    once (0.12-0.2 s a step on the 2-core VM, 2026-12-01)."""
    meta = sequence_meta(lay, geo, units, noisy=True)
    return meta.pos.to(device), SparseMask.of(block_causal_mask(meta, meta, lay, window).to(device), ATTENTION_BLOCK)


def forward_sequence(model: DuplexModel, conv: Conversation, noisy_resp: Latents, t: Tensor,
                     window: int | None, context: Latents | None = None) -> Outputs:
    """Offline forward. noisy_resp like conv.resp; t (B, N) solver times of the noisy copies;
    context: the resp tokens later units see (None: conv.resp)."""
    lay, N = model.layout, conv.units
    B = conv.text.shape[0]
    obs_v, obs_a = model.encoder(conv.frames, conv.audio)  # (B, N, Ov, F), (B, 4N, F)
    obs_a = obs_a.view(B, N, lay.obs_audio, -1)
    txt = text_inputs(conv.text)
    dev = conv.text.device
    parts = [model.embed_sinks(conv.image, conv.voice, conv.persona)]
    times = [torch.zeros(B, lay.sinks, device=dev)]
    context = conv.resp if context is None else context
    for n in range(N):
        clean = Latents(context.video[:, n], context.audio[:, n])
        noise = Latents(noisy_resp.video[:, n], noisy_resp.audio[:, n])
        parts += [model.embed_obs(obs_v[:, n], obs_a[:, n]), model.embed_text(txt[:, n]),
                  model.embed_resp(clean), model.embed_resp(noise)]
        times += [torch.zeros(B, lay.obs + lay.text + lay.resp, device=dev), t[:, n:n + 1].expand(B, lay.resp)]
    x = torch.cat(parts, 1)
    pos, mask = sequence_attention(lay, model.geometry, N, window, dev)
    h = model.transformer(x, torch.cat(times, 1), pos, mask=mask)
    h_units = h[:, lay.sinks:].view(B, N, lay.unit + lay.resp, -1)
    logits = model.text_logits(h_units[:, :, lay.obs:lay.obs + lay.text])
    v = [model.velocity(h_units[:, n, lay.unit:]) for n in range(N)]
    return Outputs(logits, Latents(torch.stack([x.video for x in v], 1), torch.stack([x.audio for x in v], 1)),
                   obs_v, obs_a, h_units[:, :, lay.obs])


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """The mean of values[mask]; with nothing masked in, a zero that keeps the graph (a batch
    may hold no answer byte, voiced unit or question)."""
    return (values * mask).sum() / mask.sum().clamp_min(1)


PROBE_LOSSES = ("card", "speaking", "intent")


class Probes(nn.Module):
    """Linear heads on the model's states, for training only (see the module's docstring)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.card = nn.Linear(cfg.obs_dim, len(COLOUR_NAMES) + 1)
        self.speaking = nn.Linear(cfg.obs_dim, 1)
        self.intent = nn.Linear(cfg.transformer.dim, len(INTENTS))

    def card_logits(self, obs_video: Tensor) -> Tensor:
        """Video tokens (..., Ov, obs_dim) -> logits of COLOUR_NAMES and "no card" (..., C + 1)."""
        return self.card(obs_video.amax(-2))

    def losses(self, out: Outputs, labels: Labels, scored: Tensor | None) -> dict[str, Tensor]:
        """Cross-entropies of the card, the user's voice and the intent, over scored units."""
        keep = torch.ones_like(labels.card, dtype=torch.bool) if scored is None else scored
        card = F.cross_entropy(self.card_logits(out.obs_video)[keep], labels.card[keep])
        speaking = F.binary_cross_entropy_with_logits(
            self.speaking(out.obs_audio).squeeze(-1).mean(-1)[keep], labels.speaking[keep])
        intent = F.cross_entropy(self.intent(out.first_text).transpose(1, 2), labels.intent.clamp_min(0),
                                 reduction="none")
        return {"card": card, "speaking": speaking, "intent": masked_mean(intent, keep & (labels.intent >= 0))}


def losses(model: DuplexModel, conv: Conversation, generator: torch.Generator | None = None,
           window: int | None = None, context_noise: float = 0.0,
           probes: Probes | None = None) -> dict[str, Tensor]:
    """Text cross-entropy ("text", and over the character's bytes alone "words"), flow-matching
    MSE ("flow") with fresh times and noise for every unit, with conv.voiced the audio's flow MSE
    over the character's voiced units ("voice") and over the silent units just after them
    ("stop"), with conv.choosing the text cross-entropy over the bytes that choose an answer
    ("choice"), and with `probes` and conv.labels their losses ("card", "speaking", "intent")."""
    B, N = conv.text.shape[:2]
    dev = conv.text.device
    t = sample_train_time(B * N, model.cfg.flow.shift, generator).view(B, N).to(dev)
    eps = Latents(*(torch.randn(x.shape, generator=generator).to(x) for x in conv.resp))
    x_t = Latents(*(noisy(x0, e, t) for x0, e in zip(conv.resp, eps)))
    context = None
    if context_noise > 0:
        s = (torch.rand(B, N, generator=generator) * context_noise).to(dev)
        context = Latents(*(noisy(x0, torch.randn(x0.shape, generator=generator).to(x0), s) for x0 in conv.resp))
    out = forward_sequence(model, conv, x_t, t, window, context)
    ce = F.cross_entropy(out.logits.flatten(0, 2).float(), conv.text.flatten(), reduction="none").view(B, N, -1)
    scored = torch.ones(B, N, dtype=torch.bool, device=dev) if conv.scored is None else conv.scored
    said = (conv.text != PAD) & scored[..., None]
    parts = {"text": masked_mean(ce.mean(-1), scored), "words": masked_mean(ce, said),
             "flow": masked_mean(flow_error(out.velocity, conv.resp, eps), scored)}
    if conv.voiced is not None:
        audio = flow_error((out.velocity.audio,), (conv.resp.audio,), (eps.audio,))
        parts["voice"] = masked_mean(audio, conv.voiced & scored)
        parts["stop"] = masked_mean(audio, just_stopped(conv.voiced) & scored)
    if conv.choosing is not None:
        parts["choice"] = masked_mean(ce, conv.choosing & scored[..., None])
    if probes is not None and conv.labels is not None:
        parts |= probes.losses(out, conv.labels, conv.scored)
    return parts


def train_step(model: DuplexModel, opt: torch.optim.Optimizer, conv: Conversation,
               generator: torch.Generator | None = None, context_noise: float = 0.0,
               probes: Probes | None = None, weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """One optimiser step on text + flow + weights[k] x each other loss k that `losses` gives
    (absent: 0); opt holds the probes' parameters too. Returns every loss."""
    model.train()
    parts = losses(model, conv, generator, model.cfg.window_units, context_noise, probes)
    weights = weights or {}
    total = parts["text"] + parts["flow"] + sum(w * parts[k] for k, w in weights.items() if w and k in parts)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return {k: v.item() for k, v in parts.items()}
