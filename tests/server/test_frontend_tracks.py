"""The output side: both tracks follow one schedule on the unit clock, so each unit's audio and
video leave together at 25 fps and 50 audio frames a second; a missing unit is a held frame and
silence (counted), a unit too late for its slot is dropped (counted) and never played late;
a stalled event loop costs no audio unless it stalls for more than a unit; errors end the call,
cancellation passes through."""
from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from server.frontend.playout import Playout
from server.frontend.tracks import AvatarAudioTrack, AvatarVideoTrack
from server.metrics import Metrics
from server.runtime.messages import UnitOutput
from server.runtime.unit_clock import UnitClock
from tests.server.fake_engine import fake_output, unit_colour

W, H, RATE, SPU = 48, 32, 24_000, 3840
LATE_S = 0.03  # how long after its due time each unit arrives (the model's answer time)


def unit_output(n: int, ready: float) -> UnitOutput:
    """Unit n: frames of unit_colour(n), a 1 kHz tone whose amplitude encodes n."""
    frames = np.empty((4, H, W, 3), np.uint8)
    frames[:] = unit_colour(n)
    amp = 0.1 + 0.05 * (n % 8)
    audio = (amp * np.sin(2 * np.pi * 1000 * np.arange(SPU) / RATE)).astype(np.float32)
    return fake_output(n, frames, audio, f"unit {n}", LATE_S, ready)


def unit_of_video(frame) -> int:
    rgb = tuple(int(v) for v in frame.to_ndarray(format="rgb24")[H // 2, W // 2])
    for n in range(64):
        if np.abs(np.subtract(unit_colour(n), rgb)).max() <= 3:
            return n
    return -1  # black: before the first unit


def unit_of_audio(frame) -> int:
    """-1 for silence, else n % 8 from the tone's amplitude."""
    # the middle of the frame: the resampler's filter blends a unit's first samples with the last
    peak = np.abs(frame.to_ndarray()[0, 100:-100].astype(np.float32) / 32768).max()
    return -1 if peak < 0.02 else round((peak - 0.1) / 0.05)


class Call:
    """A playout fed like the engine would feed it, and both tracks drained like aiortc would."""

    def __init__(self, units: int, skip: set[int] = frozenset(), late: dict[int, float] | None = None):
        self.clock = UnitClock.started_now()
        self.metrics = Metrics("tiny", "test")
        self.left: list[tuple[int, float, float]] = []  # (unit, pushed, left)
        self.errors: list[str] = []
        self.started = asyncio.Event()
        self.started.set()
        self.playout = Playout(self.clock, self.started, self.metrics,
                               lambda o, p, t: self.left.append((o.clock_unit, p, t)),
                               lambda where, e: self.errors.append(where))
        self.video, self.audio = AvatarVideoTrack(self.playout, W, H), AvatarAudioTrack(self.playout)
        self.units, self.skip, self.late = units, skip, late or {}
        self.got: dict[str, list[tuple[float, object]]] = {"video": [], "audio": []}
        self.origins: dict[str, list[float]] = {"video": [], "audio": []}  # the schedule's, per frame got

    async def feed(self) -> None:
        for n in range(self.units):
            await asyncio.sleep(max(0.0, self.clock.due(n) + LATE_S + self.late.get(n, 0) - time.monotonic()))
            if n not in self.skip:
                self.playout.push(unit_output(n, time.monotonic()))

    async def drain(self, track, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = await track.recv()
            self.got[track.kind].append((time.monotonic(), frame.pts, unit_of_video(frame)
                                         if track.kind == "video" else unit_of_audio(frame)))
            self.origins[track.kind].append(self.playout.origin)

    async def run(self, seconds: float) -> None:
        await asyncio.gather(self.feed(), self.drain(self.video, seconds), self.drain(self.audio, seconds))


@pytest.mark.timeout(20)
async def test_each_units_audio_and_video_leave_together_at_25_fps():
    call = Call(units=12)
    await call.run(2.0)
    video = [(t, pts, n) for t, pts, n in call.got["video"] if n >= 0]
    audio = [(t, pts, n) for t, pts, n in call.got["audio"] if n >= 0]
    assert len(video) >= 4 * 10 and len(audio) >= 8 * 10
    # pacing: 40 ms and 20 ms apart on the clock, pts in RTP steps
    assert np.median(np.diff([t for t, _, _ in video])) == pytest.approx(0.04, abs=0.005)
    assert np.median(np.diff([t for t, _, _ in audio])) == pytest.approx(0.02, abs=0.005)
    assert set(np.diff([p for _, p, _ in video])) == {3600}  # once the first unit plays
    assert set(np.diff([p for _, p, _ in audio])) == {960}
    # lip-sync: audio frames 2i and 2i + 1 carry the unit of video frame i, and leave with it
    audio_by_index = {pts // 960: (t, n) for t, pts, n in audio}
    pairs = 0
    for t, pts, n in video:
        i = pts // 3600
        for j in (2 * i, 2 * i + 1):
            if j in audio_by_index:
                ta, na = audio_by_index[j]
                assert na == n % 8, f"video frame {i} is unit {n}, its audio frame {j} is unit {na}"
                if i >= 4:  # (unit 0's first frames leave at once: the schedule moves when it arrives)
                    assert abs(ta - (t + 0.02 * (j - 2 * i))) < 0.015
                pairs += 1
    assert pairs >= 70
    # every unit played in order, and leaves soon after it arrives: the playout delay follows
    # the model's answer time
    played = [u for u, _, _ in call.left]
    assert played == sorted(played) and len(played) >= 9
    waits = [left - pushed for _, pushed, left in call.left[3:]]
    assert np.median(waits) < 0.01, waits
    assert call.playout.dropped == 0 and call.errors == []


@pytest.mark.timeout(20)
async def test_a_missing_unit_holds_the_last_frame_and_plays_silence_counted():
    call = Call(units=10, skip={5})
    await call.run(1.75)  # ends while unit 9 plays
    video = {pts // 3600: n for _, pts, n in call.got["video"]}
    audio = {pts // 960: n for _, pts, n in call.got["audio"]}
    unit5 = [i for i in video if i // 4 == 5]
    assert unit5 and all(video[i] == 4 for i in unit5), "unit 5's slots hold unit 4's last frame"
    assert all(audio.get(j, -1) == -1 for i in unit5 for j in (2 * i, 2 * i + 1)), "and are silent"
    # every held frame is counted, and only those: unit 5's slots, and any slot of another unit
    # whose unit came late on a loaded machine (the feed is paced by the wall clock)
    first = min(n for n in video.values() if n >= 0)
    held = [i for i in video if i // 4 >= first and video[i] != i // 4]
    assert set(unit5) <= set(held) and call.playout.underruns["video"] == len(held), (held, call.playout.underruns)
    assert call.playout.underruns["audio"] >= 2 * len(unit5)
    text = call.metrics.render().decode()
    assert f'duplex_output_underruns_total{{kind="video"}} {len(held)}.0' in text
    assert any(n == 6 for n in video.values()), "the units after it play on time"


@pytest.mark.timeout(20)
async def test_a_unit_later_than_its_slot_is_dropped_not_played_late():
    call = Call(units=14, late={9: 0.35})  # 9 and 10 (fed after it) come after their slots
    await call.run(2.6)
    played = [u for u, _, _ in call.left]
    assert played[:9] == list(range(9)) and 9 not in played and 10 not in played and 11 in played
    assert call.playout.dropped >= 8  # (+ a frame skipped when the delay moves)
    assert f"duplex_output_dropped_total {call.playout.dropped}.0" in call.metrics.render().decode()
    assert call.playout.delay > 0.1, "the playout delay grew to cover the late units"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("stall_s, skipped", [(0.1, False), (0.3, True)])
async def test_a_stalled_event_loop_loses_no_audio_unless_more_than_a_unit_behind(stall_s, skipped):
    call = Call(units=14)

    async def stall() -> None:
        await asyncio.sleep(1.0)  # unit 6 plays
        time.sleep(stall_s)  # blocks the event loop: both tracks fall behind

    await asyncio.gather(call.run(2.0), stall())
    audio = [(t, pts // 960, origin) for (t, pts, n), origin in zip(call.got["audio"], call.origins["audio"])
             if n >= 0]
    steps = set(np.diff([i for _, i, _ in audio]))
    if not skipped:  # the frames it fell behind by left at once, in order: none lost
        assert steps == {1}, steps
    else:  # too far behind: it skipped to the present rather than play everything late
        assert max(steps) > 1, steps
    # either way it is back on its schedule (which the late units moved): the last half
    # second's frames leave when they are due
    late = [t - (origin + i * 0.02) for t, i, origin in audio if t > audio[-1][0] - 0.5]
    assert np.median(late) < 0.01, late


async def test_an_unexpected_error_in_a_track_is_counted_and_ends_the_call():
    call = Call(units=0)

    def broken(index: int) -> None:
        raise ZeroDivisionError("boom")

    call.playout.take_video = broken  # type: ignore[method-assign]
    with pytest.raises(MediaStreamError):
        await call.video.recv()
    assert call.errors == ["video output"]
    assert 'duplex_media_errors_total{where="video output"} 1.0' in call.metrics.render().decode()


async def test_cancelling_a_waiting_track_is_not_an_error():
    call = Call(units=0)
    await call.audio.recv()  # the first frame goes at once (the schedule starts there)
    task = asyncio.create_task(call.audio.recv())
    await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    counted = re.findall(r'^duplex_media_errors_total\{.*\} (\S+)$', call.metrics.render().decode(), re.M)
    assert call.errors == [] and counted and all(float(v) == 0 for v in counted), counted


async def test_a_stopped_track_ends_quietly():
    call = Call(units=0)
    call.video.stop()
    with pytest.raises(MediaStreamError):
        await call.video.recv()
    assert call.errors == []


@pytest.mark.timeout(20)
async def test_the_tracks_send_nothing_before_the_clock_starts_with_the_first_media():
    call = Call(units=4)
    call.clock, call.started = UnitClock(), asyncio.Event()  # not started: no media yet
    call.playout.clock, call.playout.started = call.clock, call.started
    first = asyncio.ensure_future(call.video.recv())
    await asyncio.sleep(0.3)
    assert not first.done(), "a frame left before the call's first media"
    t_media = time.monotonic()
    call.clock.start(t_media)
    call.started.set()
    pts = (await asyncio.wait_for(first, 2)).pts  # the held frame is one object: read pts now
    assert (await asyncio.wait_for(call.video.recv(), 2)).pts > pts  # then frame after frame
