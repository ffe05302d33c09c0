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
Pure PyTorch: no processes, no sockets, no clocks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from model.config import BOS
from model.duplex import DuplexModel, Latents
from model.flow import flow_loss, noisy, sample_train_time
from model.layout import block_causal_mask, sequence_meta


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

    @property
    def units(self) -> int:
        return self.text.shape[1]


def text_inputs(text: Tensor) -> Tensor:
    """Next-token inputs of the text slots: the stream shifted right by one, BOS first."""
    B = text.shape[0]
    flat = text.reshape(B, -1)
    shifted = torch.cat([torch.full((B, 1), BOS, dtype=flat.dtype, device=flat.device), flat[:, :-1]], 1)
    return shifted.view_as(text)


def forward_sequence(model: DuplexModel, conv: Conversation, noisy_resp: Latents, t: Tensor,
                     window: int | None, context: Latents | None = None) -> tuple[Tensor, Latents]:
    """Offline forward. noisy_resp like conv.resp; t (B, N) solver times of the noisy copies;
    context: the resp tokens later units see (None: conv.resp).
    Returns text logits (B, N, k, V) and velocities of the noisy copies (like conv.resp)."""
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
    meta = sequence_meta(lay, model.geometry, N, noisy=True)
    mask = block_causal_mask(meta, meta, lay, window).to(dev)
    h = model.transformer(x, torch.cat(times, 1), meta.pos.to(dev), mask=mask)
    h_units = h[:, lay.sinks:].view(B, N, lay.unit + lay.resp, -1)
    logits = model.text_logits(h_units[:, :, lay.obs:lay.obs + lay.text])
    v = [model.velocity(h_units[:, n, lay.unit:]) for n in range(N)]
    return logits, Latents(torch.stack([x.video for x in v], 1), torch.stack([x.audio for x in v], 1))


def losses(model: DuplexModel, conv: Conversation, generator: torch.Generator | None = None,
           window: int | None = None, context_noise: float = 0.0) -> tuple[Tensor, Tensor]:
    """(text cross-entropy, flow-matching MSE) with fresh times and noise for every unit."""
    B, N = conv.text.shape[:2]
    dev = conv.text.device
    t = sample_train_time(B * N, model.cfg.flow.shift, generator).view(B, N).to(dev)
    eps = Latents(*(torch.randn(x.shape, generator=generator).to(x) for x in conv.resp))
    x_t = Latents(*(noisy(x0, e, t) for x0, e in zip(conv.resp, eps)))
    context = None
    if context_noise > 0:
        s = (torch.rand(B, N, generator=generator) * context_noise).to(dev)
        context = Latents(*(noisy(x0, torch.randn(x0.shape, generator=generator).to(x0), s) for x0 in conv.resp))
    logits, v = forward_sequence(model, conv, x_t, t, window, context)
    if conv.scored is None:
        return F.cross_entropy(logits.flatten(0, 2).float(), conv.text.flatten()), flow_loss(v, conv.resp, eps)
    ce = F.cross_entropy(logits.flatten(0, 2).float(), conv.text.flatten(), reduction="none")
    return ce.view(B, N, -1).mean(-1)[conv.scored].mean(), flow_loss(v, conv.resp, eps, conv.scored)


def train_step(model: DuplexModel, opt: torch.optim.Optimizer, conv: Conversation,
               generator: torch.Generator | None = None, context_noise: float = 0.0) -> tuple[float, float]:
    model.train()
    text_loss, fm_loss = losses(model, conv, generator, model.cfg.window_units, context_noise)
    opt.zero_grad(set_to_none=True)
    (text_loss + fm_loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return text_loss.item(), fm_loss.item()

