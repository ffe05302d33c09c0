"""`duplex bench latency` end to end on the tiny preset: the measured start, the units handed
over on the clock, and the JSON an engineer reads (rungs and skips per unit included)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.call_helpers import REPO


@pytest.mark.timeout(120)
def test_the_latency_bench_records_each_units_rung_and_the_measured_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "server.cli", "bench", "latency", "--preset", "tiny",
                          "--units", "30", "--out", str(tmp_path)], cwd=REPO, capture_output=True,
                         text=True, timeout=110)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "solver steps" in out.stdout and "measured start" in out.stdout, out.stdout
    (result,) = tmp_path.glob("*_tiny_gloo.json")
    r = json.loads(result.read_text())
    assert r["session_end"]["ok"] and r["units"] == 30
    assert r["units_out"] + r["units_skipped"] == 30
    per_unit = r["per_unit"]
    assert len(per_unit["steps"]) == r["units_out"] and set(per_unit["steps"]) <= {1, 2, 3}
    assert [m["steps"] for m in r["measured_start"]] == [3, 1] and all(m["margin"] > 0 for m in r["measured_start"])
    assert 0 < r["heartbeat_max_gap_s"] < 0.8
    assert result.with_suffix(".png").stat().st_size > 10_000
