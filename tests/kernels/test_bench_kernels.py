"""`duplex bench kernels`: the interpreter smoke run writes a valid record; without a GPU
(and without the smoke flag) the bench refuses with exit code 2 and says why.

Both run the real command line in a fresh process: the bench must choose the interpreter
before kernels/ is imported, which this test process has already done."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def duplex(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def cpu_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return {**env, "CUDA_VISIBLE_DEVICES": "", **extra}


@pytest.mark.timeout(120)
def test_interpret_smoke_writes_a_valid_record(tmp_path: Path) -> None:
    run = duplex("bench", "kernels", "--interpret-smoke", "--out", str(tmp_path), env=cpu_env())
    assert run.returncode == 0, run.stderr
    (record,) = tmp_path.glob("*_kernels.json")
    assert record.with_suffix(".png").stat().st_size > 0
    r = json.loads(record.read_text())
    assert r["interpreted"] and r["device_type"] == "cpu"
    assert r["flops_formula"] == "4 * B * Hq * Lq * Lk * d"
    (row,) = r["rows"]
    assert (row["Hq"], row["Hkv"], row["d"], row["Lq"], row["Lk"]) == (4, 2, 16, 7, 131)
    assert row["flops"] == 4 * 4 * 7 * 131 * 16
    assert row["bytes"] == 16 * (2 * 4 * 7 + 2 * 2 * 131) * 4
    assert set(row["methods"]) == {"triton", "sdpa", "reference"}
    for name, m in row["methods"].items():
        assert m["ms"] > 0 and m["pct_of_roofline"] > 0, name
        assert m["max_abs_diff_vs_triton"] < 1e-5, name


@pytest.mark.timeout(60)
def test_bench_without_a_gpu_refuses_with_exit_code_2() -> None:
    run = duplex("bench", "kernels", env=cpu_env())
    assert run.returncode == 2
    assert "no CUDA device" in run.stderr and "--interpret-smoke" in run.stderr
