"""`duplex bench gpu-check --dry-run`: every step of the GPU check runs, at CPU sizes, and lands
in the table and the summary (the real run needs a GPU: `make gpu-check`)."""
from __future__ import annotations

import json
import re

import pytest

from bench.gpu_check import SESSIONS, main

pytestmark = pytest.mark.slow


def test_the_dry_run_runs_every_step_and_records_it(tmp_path, capsys) -> None:
    assert main(["--dry-run", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dry_run"] and summary["commit"]
    names = [r["step"] for r in summary["steps"]]
    assert names == ["gpu tests", "kernels", "model-step tiny", *(f"sessions {n} (tiny)" for n in SESSIONS),
                     "latency tiny, 1 call", "latency tiny, calls on one pair"]
    for row in summary["steps"]:
        assert row["status"] == "ok" and row["figure"] and not row["figure"].startswith("no figure"), row
    assert re.fullmatch(r"\d+ passed, 0 failed, \d+ skipped", summary["steps"][0]["figure"])
    table = capsys.readouterr().out
    assert "nothing here is a GPU figure" in table and all(n in table for n in names)
