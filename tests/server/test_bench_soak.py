"""`duplex bench soak` for one minute on the tiny preset, as the operator runs it (the CLI, a
child daemon, a real aiortc call): the call lasts the whole minute, the model's units keep
arriving, no process's memory climbs, the KV rows stay put, and the report has its fields."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.server.call_helpers import REPO

pytestmark = pytest.mark.timeout(240)
RSS_GROWTH_PCT = 10.0  # first vs last window (20 s each) of a 1-minute call; a leak climbs past it


def test_a_one_minute_soak_keeps_its_call_memory_and_latency(tmp_path):
    run = subprocess.run([sys.executable, "-m", "server.cli", "bench", "soak", "--minutes", "1",
                          "--preset", "tiny", "--sample-s", "2", "--out", str(tmp_path)],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                         text=True, timeout=220)
    report = run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, f"the soak's call did not last the minute:\n{report}"
    [path] = tmp_path.glob("*_tiny_soak.json")
    assert path.with_suffix(".png").stat().st_size > 0, "the plot is written beside the JSON"
    r = json.loads(path.read_text())

    assert r["bench"] == "soak" and r["preset"] == "tiny" and r["minutes"] == 1
    assert r["call"]["lasted"] and r["call"]["duration_s"] >= 59.5 and r["call"]["daemon_exit"] == 0, r["call"]
    assert r["units"]["delivered_share"] >= 0.9, r["units"]
    assert r["units"]["skipped"] is not None
    roles = sorted(p["role"] for p in r["processes"].values())
    assert roles.count("daemon") == 1 and roles.count("thinker") == 1 and roles.count("performer") == 1, roles
    for name, p in r["processes"].items():
        assert p["rss_first_mb"] > 0 and p["rss_last_mb"] > 0, (name, p)
        assert p["growth_pct"] < RSS_GROWTH_PCT, f"{name}'s RSS grew {p['growth_pct']} % in a minute:\n{report}"
    assert r["rss_total_mb"]["growth_pct"] < RSS_GROWTH_PCT, r["rss_total_mb"]
    kv = r["kv_rows"]
    assert kv["last"] > 0 and kv["max"] == kv["last"], f"KV rows in use grew or vanished: {kv}"
    for window in ("first", "last"):
        s2s = r["s2s_ms"][window]
        assert s2s["n"] >= 100 and 0 < s2s["p50"] <= s2s["p99"], (window, s2s)
    assert set(r["s2s_ms"]["change_pct"]) == {"p50", "p99"}
    assert len(r["samples"]) >= 20 and len(r["per_unit"]["model_ms"]) == r["units"]["delivered"]
    assert r["window_s"] == pytest.approx(20, abs=0.5)
