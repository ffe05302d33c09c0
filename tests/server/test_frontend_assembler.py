"""The unit assembler: the browser's media (any size, any frame rate, 48 kHz audio) become the
model's 160 ms units on the unit clock; what is missing is filled and counted, what overflows
a bounded queue is dropped (oldest first) and counted, and a complete unit is not held back."""
from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest

from model.config import preset
from server.frontend.unit_assembler import EARLY_S, GREY, AssembledUnit, UnitAssembler
from server.metrics import Metrics
from server.runtime.unit_clock import UnitClock

CFG = preset("tiny")
W, H, SPU = CFG.video.width, CFG.video.height, CFG.audio.samples_per_unit


def assembler(clock: UnitClock) -> UnitAssembler:
    return UnitAssembler(clock, W, H, CFG.audio.sample_rate, SPU, Metrics("tiny", "test"))


def camera_frame(value: int, width: int = 640, height: int = 480) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.full((height, width, 3), value, np.uint8), format="rgb24").reformat(
        format="yuv420p")  # as aiortc's VP8 decoder delivers them


def mic_frame(i: int, freq: float = 1000.0) -> av.AudioFrame:
    """20 ms of a stereo s16 tone at 48 kHz: what aiortc's Opus decoder delivers."""
    t = (np.arange(960) + 960 * i) / 48_000
    mono = (10_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(mono, 2)[None], format="s16", layout="stereo")
    frame.sample_rate, frame.pts, frame.time_base = 48_000, 960 * i, fractions.Fraction(1, 48_000)
    return frame


@pytest.mark.parametrize("fps, fills", [
    pytest.param(30, 0, id="30fps-camera"), pytest.param(60, 0, id="60fps-camera"),
    pytest.param(12.5, 2, id="12.5fps-camera"),
])
def test_any_frame_rate_becomes_four_frames_a_unit(fps, fills):
    clock = UnitClock(t0=1000.0)
    a = assembler(clock)
    arrivals = [(i + 0.5) / fps for i in range(int(0.16 * fps + 0.5))]  # through unit 0
    for i, t in enumerate(arrivals):
        a.push_video(camera_frame(10 * i), clock.t0 + t)
    unit = a.cut(0)
    assert unit.frames.shape == (4, H, W, 3) and unit.frames.dtype == np.uint8
    assert a.filled["video"] == fills
    # each slot holds the newest frame that arrived by its end, or repeats the one before
    want, last = [], GREY
    for k in range(4):
        came = [10 * i for i, t in enumerate(arrivals) if k * 0.04 < t <= (k + 1) * 0.04 + 1e-9]
        last = came[-1] if came else last
        want.append(last)
    assert [int(f[0, 0, 0]) for f in unit.frames] == pytest.approx(want, abs=3)


def test_no_video_is_grey_then_the_last_frame_repeats_and_both_are_counted():
    clock = UnitClock(t0=1000.0)
    a = assembler(clock)
    first = a.cut(0)
    assert (first.frames == GREY).all() and a.filled["video"] == 4 and first.last_arrival is None
    a.push_video(camera_frame(200, 320, 240), clock.due(0) + 0.01)  # any size
    second = a.cut(1)
    assert np.abs(second.frames.astype(int) - 200).max() <= 3  # YUV -> RGB rounding
    assert a.filled["video"] == 4 + 3  # slots 1..3 of unit 1 had nothing new
    third = a.cut(2)
    assert (third.frames == second.frames[-1]).all() and a.filled["video"] == 7 + 4


def test_48khz_stereo_becomes_160ms_at_24khz_mono():
    a = assembler(UnitClock(t0=1000.0))
    for i in range(8):
        a.push_audio(mic_frame(i), 1000.0 + 0.02 * i)
    unit = a.cut(0)
    assert unit.audio.shape == (SPU,) and unit.audio.dtype == np.float32
    assert a.filled["audio"] == 0
    spectrum = np.abs(np.fft.rfft(unit.audio[200:]))  # past the resampler's start-up
    peak_hz = np.argmax(spectrum) * CFG.audio.sample_rate / (SPU - 200)
    assert peak_hz == pytest.approx(1000, abs=15)
    assert np.abs(unit.audio).max() == pytest.approx(10_000 / 32768, rel=0.05)


def test_missing_audio_is_silence_counted_in_20ms_frames():
    a = assembler(UnitClock(t0=1000.0))
    for i in range(5):  # 100 ms of 160
        a.push_audio(mic_frame(i), 1000.0 + 0.02 * i)
    unit = a.cut(0)
    assert a.filled["audio"] == 3
    assert np.all(unit.audio[SPU * 5 // 8:] == 0)


def test_a_slow_consumer_drops_the_oldest_input_and_counts_it():
    a = assembler(UnitClock(t0=1000.0))
    for i in range(40):  # 800 ms of audio and 40 frames pile up without a cut
        a.push_audio(mic_frame(i), 1000.0 + 0.02 * i)
        a.push_video(camera_frame(i), 1000.0 + 0.02 * i)
    assert a.dropped["video"] == 40 - 16 and a.dropped["audio"] >= 40 - 2 * 8 - 1
    metrics = a.metrics.render().decode()
    assert f'duplex_input_dropped_total{{kind="video"}} {40 - 16}.0' in metrics
    # at most two units of audio wait: the next unit is recent speech, not 800 ms old
    unit = a.cut(0)
    assert a.filled["audio"] == 0 and unit.audio.shape == (SPU,)


async def test_a_complete_unit_goes_before_it_is_due_and_an_empty_one_when_due():
    clock = UnitClock.started_now()
    a = assembler(clock)
    handed: list[tuple[AssembledUnit, float]] = []
    runner = asyncio.create_task(a.run(lambda u: handed.append((u, time.monotonic()))))
    try:
        for i in range(9):  # unit 0's audio (and the resampler's delay), complete early
            a.push_audio(mic_frame(i), time.monotonic())
        while len(handed) < 2:
            await asyncio.sleep(0.005)
    finally:
        runner.cancel()
    (u0, t0), (u1, t1) = handed[:2]
    assert (u0.unit, u1.unit) == (0, 1)
    assert clock.due(0) - EARLY_S - 0.002 <= t0 < clock.due(0), "complete: goes EARLY_S before due"
    assert clock.due(1) <= t1 < clock.due(1) + 0.03, "nothing came: goes when due (+ grace)"
    assert a.filled["audio"] == 7  # unit 1: 20 ms left over from unit 0, then silence


def test_a_4k_camera_is_scaled_down_on_arrival_and_cut_like_any_other():
    clock = UnitClock(t0=1000.0)
    a = assembler(clock)
    for i in range(16):
        a.push_video(camera_frame(90, 3840, 2160), clock.t0 + 0.01 * i)
    kept = [f for _, f in a._video]  # noqa: SLF001 - what the call holds in memory
    assert len(kept) == 16 and all((f.width, f.height) == (a.width, a.height) for f in kept)
    unit = a.cut(0)
    assert unit.frames.shape == (4, a.height, a.width, 3) and np.abs(unit.frames.astype(int) - 90).max() <= 3


def test_the_clock_starts_with_the_first_media_frame():
    clock = UnitClock()  # the session opened; no media yet
    a = assembler(clock)
    assert not a.started.is_set() and not clock.started
    a.push_video(camera_frame(10), 500.0)
    assert clock.t0 == 500.0 and a.started.is_set()
    a.push_video(camera_frame(20), 501.0)
    assert clock.t0 == 500.0, "only the first frame starts it"
