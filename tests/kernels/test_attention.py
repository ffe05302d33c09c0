"""The model's Triton attention backend: the right kernel for each call, clear errors, and the
tiny model giving the reference backend's outputs offline (mask) and streaming (cache)."""
from __future__ import annotations

from dataclasses import fields, replace

import pytest
import torch

import kernels.launch
from kernels.attention import attention_triton
from kernels.attention_reference import attention_reference
from model.attention import attend
from model.config import tiny
from model.duplex import Latents, build_model
from model.streaming import Streamer
from model.train import forward_sequence
from tests.kernels.guarded import assert_matches, randn
from tests.model.synthetic import make_character, make_conversation


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("masked", [pytest.param(False, id="no-mask,chunk"),
                                    pytest.param(True, id="mask,block-causal")])
def test_attend_with_triton_backend_equals_reference(masked: bool, dtype: torch.dtype,
                                                     device: torch.device) -> None:
    Lq, Lk = 7, 33
    q = randn(1, 4, Lq, 16, dtype=dtype, device=device)
    k, v = (randn(1, 2, Lk, 16, dtype=dtype, device=device) for _ in range(2))
    # The chunk's queries are the cache's last Lq rows: causal among them, all earlier visible.
    mask = (torch.arange(Lk)[None, :] <= torch.arange(Lk - Lq, Lk)[:, None]).to(device) if masked else None
    assert_matches(attend(q, k, v, mask, backend="triton"), attention_reference(q, k, v, mask),
                   dtype, "attend(backend='triton')")


def test_mask_of_the_wrong_shape_or_dtype_is_a_clear_error(device: torch.device) -> None:
    q = randn(1, 2, 5, 16, dtype=torch.float32, device=device)
    k = randn(1, 2, 9, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"attention_triton: mask must be a bool \(Lq, Lk\) = \(5, 9\)"):
        attention_triton(q, k, k, torch.ones(9, 5, dtype=torch.bool, device=device))
    with pytest.raises(ValueError, match="found torch.float32"):
        attention_triton(q, k, k, torch.ones(5, 9, device=device))


def test_shape_and_device_errors_say_what_was_found(device: torch.device,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    q = randn(1, 2, 5, 16, dtype=torch.float32, device=device)
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, H, L, d\), found shape \(2, 5, 16\)"):
        attention_triton(q[0], q, q)
    with pytest.raises(ValueError, match=r"must agree on batch"):
        attention_triton(q, q.expand(2, -1, -1, -1), q.expand(2, -1, -1, -1))
    monkeypatch.setattr(kernels.launch, "INTERPRET", False)  # as on a machine with a GPU
    cpu = q.cpu()
    with pytest.raises(RuntimeError, match="need a CUDA device.*TRITON_INTERPRET=1"):
        attention_triton(cpu, cpu, cpu)


def test_tiny_model_with_triton_backend_gives_the_reference_outputs(device: torch.device) -> None:
    """Offline forward under the block-causal mask and unit-by-unit streaming through the
    cache: the same logits and velocities as the reference backend (2 units, window 1)."""
    units = 2
    cfg = tiny().model_copy(update={"window_units": 1})
    model = build_model(cfg, seed=0)
    character = make_character(cfg)
    conv = make_conversation(model, character, units)  # encoded on CPU, then moved
    model.to(device)
    conv = replace(conv, resp=Latents(*(x.to(device) for x in conv.resp)),
                   **{f.name: getattr(conv, f.name).to(device) for f in fields(conv) if f.name != "resp"})
    g = torch.Generator().manual_seed(3)
    noisy = Latents(*(torch.randn(x.shape, generator=g).to(device) for x in conv.resp))
    t = torch.rand(1, units, generator=g).to(device)
    spf = cfg.audio.samples_per_unit

    def run(backend: str) -> list[torch.Tensor]:
        model.transformer.backend = backend
        with torch.no_grad():
            logits, v = forward_sequence(model, conv, noisy, t, window=1)
            outs = [logits, v.video, v.audio]
            s = Streamer(model)
            st = s.new_state()
            s.prefill(st, character)
            for n in range(units):
                s.observe(st, conv.frames[:, 4 * n:4 * n + 4], conv.audio[:, n * spf:(n + 1) * spf])
                outs.append(s.speak(st, forced=conv.text[:, n])[1])
                vn = s.velocity(st.cache, n, Latents(noisy.video[:, n], noisy.audio[:, n]), t[:, n])
                outs += [vn.video, vn.audio]
                s.commit(st, Latents(conv.resp.video[:, n], conv.resp.audio[:, n]))
        return outs

    for i, (got, want) in enumerate(zip(run("triton"), run("reference"), strict=True)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=lambda m: f"output {i}: {m}")
