"""The model on backend "triton" (Triton attention, fused RMSNorm + adaLN modulation, in-place
RoPE) gives the reference backend's outputs: the offline forward under the block-causal mask
and every streaming step (prefill, observe, speak, velocity, denoise, commit), tiny preset, fp32.

Tolerance: |triton - reference| <= 1e-5 absolute on logits, velocities, latents and the KV
cache (fp32: the kernels only sum in another order than PyTorch; <= 7e-7 seen)."""
from __future__ import annotations

from collections import Counter
from dataclasses import fields, replace

import pytest
import torch

import kernels.attention
import model.attention
from model.config import tiny
from model.duplex import Latents, build_model
from model.streaming import Streamer
from model.train import forward_sequence
from tests.model.synthetic import make_character, make_conversation

ATOL = 1e-5
UNITS, WINDOW = 2, 1  # the ring wraps at every unit


def count_kernel_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the model's calls into the three Triton host wrappers."""
    calls: Counter = Counter()

    def counted(module: object, name: str) -> None:
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(kernels.attention, "attention_triton")  # model.attention imports it on use
    counted(model.attention, "norm_modulate_triton")
    counted(model.attention, "rope_triton_")
    return calls


def test_tiny_model_on_triton_backend_gives_the_reference_outputs(
        device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny().model_copy(update={"window_units": WINDOW})
    net = build_model(cfg, seed=0)
    character = make_character(cfg)
    conv = make_conversation(net, character, UNITS)  # encoded on CPU, then moved
    net.to(device)
    conv = replace(conv, resp=Latents(*(x.to(device) for x in conv.resp)),
                   **{f.name: v.to(device) for f in fields(conv)
                      if f.name != "resp" and (v := getattr(conv, f.name)) is not None})
    g = torch.Generator().manual_seed(3)
    noisy = Latents(*(torch.randn(x.shape, generator=g).to(device) for x in conv.resp))
    t = torch.rand(1, UNITS, generator=g).to(device)
    spf = cfg.audio.samples_per_unit

    def run(backend: str) -> list[torch.Tensor]:
        net.transformer.backend = backend
        with torch.no_grad():
            logits, v = forward_sequence(net, conv, noisy, t, window=WINDOW)[:2]
        outs = [logits, v.video, v.audio]
        s = Streamer(net)
        st = s.new_state()
        s.prefill(st, character)
        outs += [st.cache.k.clone(), st.cache.v.clone()]
        for n in range(UNITS):
            s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
            outs.append(s.speak(st, forced=conv.text[:, n])[1])
            outs += s.velocity(st.cache, n, Latents(noisy.video[:, n], noisy.audio[:, n]), t[:, n])
            outs += s.denoise(st.cache, n, Latents(noisy.video[:, n], noisy.audio[:, n]))
            s.commit(st, Latents(conv.resp.video[:, n], conv.resp.audio[:, n]))
            outs += [st.cache.k.clone(), st.cache.v.clone()]
        return outs

    want = run("reference")
    calls = count_kernel_calls(monkeypatch)
    got = run("triton")
    assert set(calls) == {"attention_triton", "norm_modulate_triton", "rope_triton_"}, calls
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"output {i}: {m}")


def test_triton_backend_refuses_to_train(device: torch.device) -> None:
    net = build_model(tiny(), seed=0).to(device)
    net.transformer.backend = "triton"
    x = torch.zeros(1, 3, tiny().transformer.dim, device=device)
    with pytest.raises(RuntimeError, match="inference only.*torch.no_grad"):
        net.transformer(x, torch.zeros(1, 3, device=device), torch.zeros(3, 3, device=device))
