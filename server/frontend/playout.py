"""The output side of a call: the avatar's decoded units on one schedule, the session's unit
clock, which both output tracks (tracks.py) follow, so that a unit's audio and video leave
together and latency never builds up.

Unit n plays from `due(n) + delay`: input unit n is complete at due(n), the model answers it
`signal-to-signal` later, and `delay` is the playout delay that covers the model's answer time.
The schedule is a tick every 40 ms: tick i = 4 n + k is frame k of unit n, at
clock.due(n) + delay + 0.04 k. The video track plays tick i, the audio track its two 20 ms
frames 2i and 2i + 1. Each track maps its frame index to (unit, frame) by time alone, so
lip-sync holds by construction, whatever either track's timing.

  push(unit)  4 video frames (RGB -> av.VideoFrame) and 160 ms of audio (24 kHz float ->
              48 kHz s16 by PyAV, 8 frames of 20 ms) become the unit's 4 ticks
  take(i)     tick i, or None when its unit has not arrived (the tracks hold the last frame /
              play silence and count an underrun); a unit that arrives after its ticks is
              dropped (counted): it is never played late
  delay       adapts to the model: a high quantile of how late recent units arrived after
              their due time, plus a margin; a change moves the schedule (a held or a skipped
              frame) and happens only when it is worth more than HYSTERESIS_S
A track behind its schedule (a busy event loop) sends its next frames at once, in order, and
skips to the present only when more than CATCH_UP_S behind: no audio is lost to a stall shorter
than a unit, and latency builds up by at most that.
Before the call's first media the unit clock has not started (unit_assembler.py): the tracks
wait for `started` and send nothing. Units the runtime skipped (the pair was behind) never
arrive: their ticks hold the last frame and play silence, counted as underruns.
The first tick of each unit that leaves reports when (`on_leave(out, pushed_at, left)`): the
front end's output overhead, and the moment the unit's captions go to the page.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import av
import numpy as np

from model.config import FPS, FRAMES_PER_UNIT
from server.runtime.messages import UnitOutput
from server.metrics import Metrics
from server.runtime.unit_clock import UnitClock

log = logging.getLogger("duplex.playout")
TICK_S = 1 / FPS  # one video frame
AUDIO_FRAME_S = 0.02  # one WebRTC audio frame
AUDIO_RATE = 48_000  # WebRTC's Opus rate
AUDIO_FRAME = round(AUDIO_RATE * AUDIO_FRAME_S)  # 960 samples
AUDIO_PER_TICK = round(TICK_S / AUDIO_FRAME_S)  # 2
# The playout delay: the QUANTILE of the last WINDOW units' lateness, plus MARGIN_S.
WINDOW, QUANTILE, MARGIN_S, HYSTERESIS_S = 50, 0.95, 0.002, 0.005
START_DELAY_S, MAX_DELAY_S = 0.2, 1.0  # before the first unit; the most it may grow to
CATCH_UP_S = 0.16  # a track further behind its schedule than a unit skips to the present


@dataclass
class Ticks:
    """One unit, ready to leave: frame k of it is tick 4 n + k."""
    out: UnitOutput
    pushed_at: float  # time.monotonic() when it was laid out (after out.ready_at)
    video: list[av.VideoFrame]
    audio: list[av.AudioFrame]  # 8 frames of 20 ms
    live: bool  # pushed while playing: if never played, it counts as dropped
    played: set[int] = field(default_factory=set)  # video ticks taken


class Playout:
    def __init__(self, clock: UnitClock, started: asyncio.Event, metrics: Metrics,
                 on_leave: Callable[[UnitOutput, float, float], None],
                 on_error: Callable[[str, BaseException], None]):
        self.clock, self.metrics, self.on_leave, self.on_error = clock, metrics, on_leave, on_error
        self.started = started  # set when the unit clock starts (the call's first media)
        self.delay = START_DELAY_S
        self.playing = False  # a track has asked for media: drops and underruns count from here
        self.underruns = {"video": 0, "audio": 0}
        self.dropped = 0  # video ticks (40 ms of video and audio) never played
        self._units: dict[int, Ticks] = {}
        self._first: int | None = None  # the first unit pushed
        self._lateness: deque[float] = deque(maxlen=WINDOW)
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)
        self._carry = np.zeros(0, np.int16)  # resampled audio not yet in a unit
        self._pts = 0  # samples pushed, at the model's rate

    # -- the schedule -------------------------------------------------------------------------
    @property
    def origin(self) -> float:
        """When tick 0 (unit 0, frame 0) plays."""
        return self.clock.due(0) + self.delay

    def next_index(self, last: int | None, then: float, period: float) -> int:
        """A track's next frame index, given its last and the origin `then` when it chose it.
        Frames the schedule moved over (the delay shrank) are skipped; those the track itself
        fell behind by (a busy event loop) go at once, in order: the receiver's jitter buffer
        absorbs the burst, where a skipped 20 ms of audio is a click. A track more than
        CATCH_UP_S behind skips to the current frame."""
        self.playing = True
        now = time.monotonic()
        current = int((now - self.origin) // period)
        if last is None:
            return current
        behind = int((now - then) // period) - last - 1  # on the schedule it chose `last` on
        if behind * period > CATCH_UP_S:
            return current
        return max(last + 1, current - max(0, behind))

    def due(self, index: int, period: float) -> float:
        return self.origin + index * period

    def _adapt(self, unit: int, now: float) -> None:
        self._lateness.append(now - self.clock.due(unit))
        target = min(MAX_DELAY_S, float(np.quantile(self._lateness, QUANTILE)) + MARGIN_S)
        if len(self._lateness) == 1 or abs(target - self.delay) > HYSTERESIS_S:
            log.debug("playout delay %.1f -> %.1f ms", self.delay * 1e3, target * 1e3)
            self.delay = target

    # -- units in -----------------------------------------------------------------------------
    def push(self, out: UnitOutput) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = out.clock_unit
        self._adapt(out.clock_unit, now)
        n = out.audio.size  # 160 ms at the model's rate
        src = av.AudioFrame.from_ndarray(out.audio.reshape(1, n), format="flt", layout="mono")
        src.sample_rate, src.pts = round(n / (FRAMES_PER_UNIT * TICK_S)), self._pts
        self._pts += n
        pcm = np.concatenate([self._carry] + [f.to_ndarray().reshape(-1) for f in self._resampler.resample(src)])
        need = FRAMES_PER_UNIT * AUDIO_PER_TICK * AUDIO_FRAME
        if pcm.size < need:  # the first unit only: the resampler holds back its filter delay
            pcm = np.concatenate([np.zeros(need - pcm.size, np.int16), pcm])
        pcm, self._carry = pcm[:need], pcm[need:]
        audio = [av.AudioFrame.from_ndarray(a, format="s16", layout="mono") for a in pcm.reshape(-1, 1, AUDIO_FRAME)]
        for a in audio:
            a.sample_rate = AUDIO_RATE
        video = [av.VideoFrame.from_ndarray(f, format="rgb24") for f in out.frames]
        self._units[out.clock_unit] = Ticks(out, now, video, audio, self.playing)

    # -- ticks out ----------------------------------------------------------------------------
    def _unit(self, index: int) -> tuple[Ticks | None, int]:
        """The unit of tick `index` and the frame in it; units before the previous one go."""
        unit, k = divmod(index, FRAMES_PER_UNIT)
        for old in [u for u in self._units if u < unit - 1]:
            gone = self._units.pop(old)
            missed = FRAMES_PER_UNIT - len(gone.played)
            if missed and gone.live:
                self.dropped += missed
                self.metrics.output_dropped.inc(missed)
        return self._units.get(unit), k

    def take_video(self, index: int) -> av.VideoFrame | None:
        ticks, k = self._unit(index)
        if ticks is None:
            return None
        if not ticks.played:
            self.on_leave(ticks.out, ticks.pushed_at, time.monotonic())
        ticks.played.add(k)
        return ticks.video[k]

    def take_audio(self, index: int) -> av.AudioFrame | None:
        ticks, k = self._unit(index // AUDIO_PER_TICK)
        return None if ticks is None else ticks.audio[k * AUDIO_PER_TICK + index % AUDIO_PER_TICK]

    def underrun(self, kind: str, index: int, period: float) -> None:
        """Frame `index` of a track (one of `period` seconds) had nothing to play: counted once
        the model's output has begun (the slots before its first unit are not underruns)."""
        unit = int(index * period / (FRAMES_PER_UNIT * TICK_S))
        if self._first is not None and unit >= self._first:
            self.underruns[kind] += 1
            self.metrics.output_underruns.labels(kind).inc()

    def fail(self, kind: str, error: BaseException) -> None:
        """An unexpected error in a track: counted, logged with its traceback, the call ends."""
        self.metrics.media_errors.labels(f"{kind} output").inc()
        log.error("the %s output track failed", kind, exc_info=error)
        self.on_error(f"{kind} output", error)
