"""`duplex presets [--json]`: each preset's unit layout and parameter count (meta device)."""
from __future__ import annotations

import argparse
import json

from model.config import FPS, PRESETS, UNIT_SECONDS, ModelConfig
from model.duplex import count_parameters


def describe(cfg: ModelConfig) -> dict:
    lay, t = cfg.layout, cfg.transformer
    return {
        "preset": cfg.name,
        "parameters": count_parameters(cfg),
        "video": {"height": cfg.video.height, "width": cfg.video.width, "fps": FPS,
                  "vae_spatial": cfg.video.vae_spatial, "latent_hw": list(cfg.video.latent_hw),
                  "patch": cfg.video.patch},
        "audio": {"sample_rate": cfg.audio.sample_rate, "samples_per_unit": cfg.audio.samples_per_unit,
                  "latents_per_unit": lay.resp_audio},
        "unit_ms": round(UNIT_SECONDS * 1000),
        "tokens_per_unit": {"obs": lay.obs, "text": lay.text, "resp": lay.resp, "total": lay.unit},
        "sink_tokens": lay.sinks,
        "window_units": lay.window_units,
        "window_seconds": round(lay.window_units * UNIT_SECONDS, 2),
        "kv_cache_rows": lay.cache_rows,
        "transformer": {"dim": t.dim, "layers": t.n_layers, "heads": t.n_heads,
                        "kv_heads": t.n_kv_heads, "head_dim": t.head_dim, "ffn_dim": t.ffn_dim},
        "solver": {"steps": cfg.flow.steps, "shift": cfg.flow.shift, "kind": cfg.flow.solver},
    }


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="duplex presets", description=__doc__)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    rows = [describe(make()) for make in PRESETS.values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        v, a, tok, p = r["video"], r["audio"], r["tokens_per_unit"], r["parameters"]
        print(f"{r['preset']:>5}: {_human(p['total'])} parameters "
              f"(transformer {_human(p['transformer'])}, vae {_human(p['vae'])}, encoder {_human(p['encoder'])})")
        print(f"       video {v['width']}x{v['height']} @ {v['fps']} fps, latent {v['latent_hw'][1]}x"
              f"{v['latent_hw'][0]} (/{v['vae_spatial']}), patch {v['patch']}; audio {a['sample_rate']} Hz mono")
        print(f"       unit {r['unit_ms']} ms = obs {tok['obs']} + text {tok['text']} + resp {tok['resp']}"
              f" = {tok['total']} tokens; sinks {r['sink_tokens']}; window {r['window_units']} units"
              f" ({r['window_seconds']} s); KV cache {r['kv_cache_rows']} rows a layer")
    return 0
