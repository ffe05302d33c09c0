"""`duplex bench model-step --sessions N`: one session and a batch of N timed side by side."""
from __future__ import annotations

import pytest
import torch

from bench.model_step import batched, main


def test_sessions_records_one_session_and_the_batch_side_by_side() -> None:
    r = batched("tiny", torch.device("cpu"), torch.float32, units=2, warmup=1, sessions=3)
    assert r["bench"] == "model-step-sessions" and r["sessions"] == 3 and r["commit"]
    assert set(r["paths"]) == {"1", "3"}
    for path in r["paths"].values():
        assert all(path["per_unit_ms"][role]["p50"] > 0 for role in ("thinker", "performer"))
    assert all(g > 0 for g in r["throughput_gain_p50"].values())


@pytest.mark.parametrize("args", [["--sessions", "1"], ["--sessions", "2", "--compile"]])
def test_sessions_refuses_what_it_cannot_compare(args: list[str], capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--preset", "tiny", *args])
    assert "--sessions N" in capsys.readouterr().err
