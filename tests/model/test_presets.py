"""Presets: each states its unit layout; `base` and `large` come within 15 % of 1.3 B and 14 B
parameters, counted on the meta device; configs reject inconsistent geometry by naming the rule."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from model.config import PRESETS, AudioConfig, TransformerConfig, VideoConfig, preset
from model.duplex import count_parameters
from server.cli import main as cli


@pytest.mark.parametrize("name,target", [pytest.param("base", 1.3e9, id="base~1.3B"),
                                         pytest.param("large", 14e9, id="large~14B")])
def test_gpu_presets_are_within_15_percent_of_their_size(name: str, target: float) -> None:
    total = count_parameters(preset(name))["total"]
    assert abs(total - target) / target <= 0.15, f"{name}: {total / 1e9:.2f} B"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_a_consistent_layout(name: str) -> None:
    cfg = preset(name)
    lay = cfg.layout
    assert lay.unit == lay.obs + lay.text + lay.resp
    assert lay.resp_video == cfg.video.token_grid[0] * cfg.video.token_grid[1]
    assert lay.cache_rows == lay.sinks + cfg.window_units * lay.unit
    assert cfg.audio.samples_per_unit == 3840


def test_presets_command_prints_json_with_layouts(capsys) -> None:
    assert cli(["presets", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(PRESETS)
    assert (rows["cpu"]["video"]["width"], rows["cpu"]["video"]["height"]) == (preset("cpu").video.width, preset("cpu").video.height)
    assert rows["tiny"]["tokens_per_unit"]["total"] == preset("tiny").layout.unit
    assert cli(["presets"]) == 0
    assert "parameters" in capsys.readouterr().out


def test_unknown_preset_and_bad_geometry_are_named_errors() -> None:
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(ValidationError, match="multiple of n_kv_heads"):
        TransformerConfig(dim=64, n_layers=1, n_heads=4, n_kv_heads=3, ffn_dim=64)
    with pytest.raises(ValidationError, match="multiples of vae_spatial"):
        VideoConfig(height=40, width=48, vae_spatial=16, vae_channels=4, patch=1, vae_width=8,
                    obs_spatial=8, obs_width=8)
    with pytest.raises(ValidationError, match="product of audio strides"):
        AudioConfig(vae_channels=4, vae_width=8, obs_width=8, strides=(4, 4, 6, 8))
