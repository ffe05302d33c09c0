"""`duplex bench latency --sessions N`: N calls on one pair of N slots and on N pairs, side by
side, at the top and the lowest rung, each call's misses and latency its own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.latency import main

pytestmark = pytest.mark.timeout(300)


def test_n_calls_on_one_pair_and_on_n_pairs_side_by_side(tmp_path: Path, capsys) -> None:
    assert main(["--preset", "tiny", "--transport", "gloo", "--sessions", "2", "--units", "8",
                 "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("*_tiny_sessions.json")
    r = json.loads(path.read_text())
    assert r["bench"] == "latency-sessions" and r["commit"] and r["transport"] == "gloo"
    runs = {(x["layout"], x["rung"]): x for x in r["runs"]}
    assert set(runs) == {(layout, rung) for layout in ("one_pair", "separate_pairs") for rung in ("top", "lowest")}
    assert (runs["one_pair", "top"]["pairs"], runs["one_pair", "top"]["slots"]) == (1, 2)
    assert (runs["separate_pairs", "top"]["pairs"], runs["separate_pairs", "top"]["slots"]) == (2, 1)
    assert runs["one_pair", "top"]["steps"] > runs["one_pair", "lowest"]["steps"]  # the rung was held
    for x in runs.values():
        assert len(x["per_call"]) == 2 and x["compute_ms_per_call_unit"] > 0
        assert x["stages_p50_ms"]["performer"]["solve"] > 0 and x["stages_p50_ms"]["thinker"]["encode"] > 0
        assert all(c["signal_to_signal_p99_ms"] > 0 for c in x["per_call"])
    assert set(r["largest_calls_holding_real_time"]) == {"one_pair@top", "one_pair@lowest",
                                                         "separate_pairs@top", "separate_pairs@lowest"}
    assert "largest N holding real time" in capsys.readouterr().out
