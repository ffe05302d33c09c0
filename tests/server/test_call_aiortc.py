"""A real call to `duplex serve` (thinker and performer as two processes) from an aiortc client
on loopback with a synthetic camera and microphone: 25 fps video, continuous 48 kHz audio and
captions come back, typed text enters the model's text stream (and so comes back in the
captions), and /metrics then shows the session, the unit latency and both workers'
stages. The front end's overhead figures of the call are written to test-artifacts/.

DUPLEX_TEST_PRESET=cpu runs it on the `cpu` preset (the default is `tiny`, fast);
DUPLEX_TEST_CALL_S=30 makes the call longer (5 s by default), for figures worth recording."""
from __future__ import annotations

import asyncio
import datetime as dt
import os

import numpy as np
import pytest
import torch

from bench.model_step import device_name, git_commit
from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric, write_artifact

pytestmark = pytest.mark.timeout(180)
PRESET = os.environ.get("DUPLEX_TEST_PRESET", "tiny")
CALL_S = float(os.environ.get("DUPLEX_TEST_CALL_S", "5"))  # longer to record figures


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
            "n": len(values)}


async def test_an_aiortc_call_gets_25fps_video_continuous_audio_and_captions(daemon):
    client = CallClient(daemon.url)
    await client.call(character="ada")
    t0 = await client.wait_media()
    await asyncio.sleep(1.0)
    client.say("hello, Ada")  # typed text: it fills the next text slots, so it comes back as captions
    await asyncio.sleep(CALL_S)
    r = rates(client.got, t0 + 0.5, t0 + 0.5 + CALL_S)
    await client.hangup()
    assert r["units_delivered"] >= 0.85, r  # the model's units, not only held frames
    assert r["fps"] >= 24, r
    assert r["sample_rates"] == [48_000] and r["audio_rate"] >= 0.97 * 48_000, r
    assert r["audio_max_gap_s"] < 0.1, r
    assert client.got.of("hello")[0]["character"] == "Ada"
    assert {"type": "text", "text": "hello, Ada", "delivered": True} in client.got.of("text")
    assert "hello, Ada" in "".join(e["text"] for e in client.got.of("caption")), "typed text entered the stream"
    if PRESET == "tiny":  # (the cpu preset's dummy weights soon say only bytes that are not UTF-8)
        assert len(client.got.of("caption")) >= 5, "the dummy model's text slots arrive as captions"
    latency = client.got.of("latency")[5:]  # past the call's start
    assert {e["steps"] for e in latency} <= set(range(1, latency[0]["top_steps"] + 1))

    await asyncio.sleep(1.0)  # the call ends on the server
    text = daemon.metrics()
    assert metric(text, "duplex_sessions_total", 'outcome="ok"') == 1
    assert metric(text, "duplex_sessions_active") == 0
    assert metric(text, "duplex_unit_latency_seconds_count") >= 30
    assert metric(text, "duplex_stage_duration_seconds_count", 'role="thinker",stage="encode"') >= 30
    assert metric(text, "duplex_stage_duration_seconds_count", 'role="performer",stage="solve"') >= 30
    assert metric(text, "duplex_transfer_bytes_total", 'direction="thinker->performer"') > 0
    assert metric(text, "duplex_frontend_overhead_seconds_count", 'direction="out"') >= 30
    assert f'preset="{PRESET}",transport="gloo"' in text
    assert metric(text, "duplex_solver_steps") >= 1
    assert metric(text, "duplex_realtime_margin", 'rung="top"') > 0
    assert "real-time margin" in daemon.log_text(), "the measured start is logged"
    assert metric(text, "duplex_units_skipped_total") >= latency[-1]["skipped"]

    figures = {
        "bench": "frontend-overhead", "preset": PRESET, "transport": "gloo",
        "device": device_name(torch.device("cpu")), "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "client": "aiortc on loopback, synthetic 320x240 camera at 30 fps + 48 kHz tone",
        "call_s": CALL_S, "video_fps": round(r["fps"], 2), "audio_samples_per_s": r["audio_rate"],
        "definitions": {
            "in_ms": "newest input frame of a unit arrived -> the unit handed to the thinker's pipe",
            "out_ms": "unit output ready in the daemon -> its first frame leaves the track",
            "wait_ms": "the part of out_ms spent in the playout delay (absorbs the model's jitter)",
            "model_ms": "unit handed over -> its decoded output back (signal-to-signal, model side)",
        },
        **{k: percentiles([e[k] for e in latency if e[k] is not None])
           for k in ("in_ms", "out_ms", "wait_ms", "model_ms")},
        "units_played": len(client.got.of("latency")),
        "output_underruns": {k: metric(text, "duplex_output_underruns_total", f'kind="{k}"') for k in ("video", "audio")},
        "output_dropped_ticks": metric(text, "duplex_output_dropped_total"),
        "input_fill": {k: metric(text, "duplex_input_fill_total", f'kind="{k}"') for k in ("video", "audio")},
        "deadline_misses": {k: metric(text, "duplex_deadline_misses_total", f'role="{k}"') for k in ("thinker", "performer")},
    }
    write_artifact(f"frontend_overhead_{PRESET}.json", figures)


async def test_typed_text_waiting_for_the_model_is_bounded_and_refusals_are_reported(daemon):
    """The thinker puts k typed bytes a unit into the stream: text typed faster waits, up to a
    bound (MAX_TYPED_BYTES); a message past it is refused and the page is told."""
    client = CallClient(daemon.url)
    await client.call()
    await client.wait_media()
    message = "x" * 400
    for _ in range(6):  # 2400 bytes at once: far more than 1024 can wait
        client.say(message)
    await asyncio.sleep(1.0)
    answers = [e["delivered"] for e in client.got.of("text")]
    await client.hangup()
    assert answers[:2] == [True, True] and answers[2:] == [False] * 4, answers
