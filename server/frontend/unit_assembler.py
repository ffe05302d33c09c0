"""The input side of a call: the browser's camera and microphone, cut into the model's 160 ms
units on the session's unit clock.

The clock starts here, with the call's first media frame (audio or video): `started` is set
then, and unit 0 spans the 160 ms from that frame's arrival. Slow ICE (TURN) or a slow first
frame therefore delays the call's start, never makes its first units overdue.

  video  any size, any rate: each frame is kept with its arrival time (a bounded queue; when
         full the oldest is dropped and counted); a frame larger than MAX_KEPT_PIXELS (a 4K
         camera) is scaled to the model's size on arrival, so a call holds little memory. Unit n's four 40 ms slots take the newest
         frame that arrived by the slot's end (a faster camera loses frames, a slower one
         repeats them); a slot with no new frame repeats the last one and is counted as a fill.
         Only the frames used are converted (PyAV: scale + RGB), at cut time.
  audio  48 kHz Opus, decoded by aiortc to s16: resampled by PyAV to the model's rate, the
         channels averaged to mono, float32, as it arrives, into a bounded buffer (at most
         `max_audio_units` units; the oldest samples go first, counted). A unit takes 160 ms;
         what is missing is silence, counted in 20 ms frames.
Unit n is handed on as soon as its 160 ms of audio are in, but not more than EARLY_S before
the clock says it is due (so the pace stays the clock's), and at the latest when it is due
(+ a small grace for the loop's wake-up), whatever arrived: latency never builds up behind a
slow or silent browser, and a unit does not sit waiting for the clock once it is complete.
No per-pixel or per-sample Python loops: numpy and PyAV do the work.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import av
import numpy as np

from model.config import FPS, FRAMES_PER_UNIT
from server.metrics import Metrics
from server.runtime.unit_clock import UnitClock

EARLY_S = 1 / FPS  # a complete unit may go at most one video frame before it is due
AUDIO_FRAME_S = 0.02  # fills and drops of audio are counted in 20 ms frames, as WebRTC sends them
GREY = 128  # the picture before the camera's first frame: 0.0 in the model's [-1, 1]
MAX_KEPT_PIXELS = 1280 * 720  # larger frames are scaled down as they arrive, not kept whole


@dataclass
class AssembledUnit:
    unit: int
    frames: np.ndarray  # (4, H, W, 3) uint8 RGB
    audio: np.ndarray  # (samples_per_unit,) float32 in [-1, 1]
    last_arrival: float | None  # time.monotonic() of the newest input used; None: nothing came
    cut_at: float  # time.monotonic() when the unit was cut


class UnitAssembler:
    def __init__(self, clock: UnitClock, width: int, height: int, sample_rate: int,
                 samples_per_unit: int, metrics: Metrics, max_video_frames: int = 16,
                 max_audio_units: int = 2):
        self.clock, self.width, self.height = clock, width, height
        self.samples_per_unit = samples_per_unit
        self.metrics = metrics
        self.filled = {"video": 0, "audio": 0}
        self.dropped = {"video": 0, "audio": 0}
        self._video: deque[tuple[float, av.VideoFrame]] = deque()
        self._max_video = max_video_frames
        self._last = np.full((height, width, 3), GREY, np.uint8)
        self._rate = sample_rate
        self._resampler: av.AudioResampler | None = None  # made for the first frame's layout
        self._audio = np.zeros(max_audio_units * samples_per_unit, np.float32)
        self._audio_len = 0
        self._audio_arrived: float | None = None
        self._samples_per_frame = round(sample_rate * AUDIO_FRAME_S)
        self._complete = asyncio.Event()  # a unit's worth of audio is in
        self.started = asyncio.Event()  # the first media arrived: the unit clock runs
        if clock.started:
            self.started.set()

    def start(self, t: float) -> None:
        """Start the unit clock at `t` (the first media's arrival); later calls change nothing."""
        if not self.started.is_set():
            self.clock.start(t)
            self.started.set()

    def _fill(self, kind: str, n: int) -> None:
        if n:
            self.filled[kind] += n
            self.metrics.input_fill.labels(kind).inc(n)

    def _drop(self, kind: str, n: int) -> None:
        self.dropped[kind] += n
        self.metrics.input_dropped.labels(kind).inc(n)

    # -- arrivals (the track readers call these as frames come in) ----------------------------
    def push_video(self, frame: av.VideoFrame, arrived: float) -> None:
        self.start(arrived)
        if frame.width * frame.height > MAX_KEPT_PIXELS:
            frame = frame.reformat(width=self.width, height=self.height, format="rgb24")
        self._video.append((arrived, frame))
        if len(self._video) > self._max_video:
            self._video.popleft()
            self._drop("video", 1)

    def push_audio(self, frame: av.AudioFrame, arrived: float) -> None:
        self.start(arrived)
        if self._resampler is None:
            # keep the caller's channels and average them: FFmpeg's stereo -> mono downmix adds
            # +3 dB, which would push a loud voice past full scale
            self._resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=self._rate)
        for f in self._resampler.resample(frame):
            x = f.to_ndarray().mean(axis=0, dtype=np.float32)  # (channels, n) -> (n,)
            buf, cap = self._audio, self._audio.size
            if x.size >= cap:
                x = x[-cap:]
            overflow = self._audio_len + x.size - cap
            if overflow > 0:  # drop the oldest samples: the newest speech is what counts
                buf[:self._audio_len - overflow] = buf[overflow:self._audio_len]
                self._audio_len -= overflow
                self._drop("audio", math.ceil(overflow / self._samples_per_frame))
            buf[self._audio_len:self._audio_len + x.size] = x
            self._audio_len += x.size
        self._audio_arrived = arrived
        if self._audio_len >= self.samples_per_unit:
            self._complete.set()

    # -- the cut ------------------------------------------------------------------------------
    def cut(self, unit: int) -> AssembledUnit:
        """Unit `unit` from what has arrived; removes what it used."""
        start = self.clock.due(unit) - self.clock.period
        newest: float | None = None
        frames = []
        for k in range(FRAMES_PER_UNIT):
            slot_end = start + (k + 1) / FPS
            taken = None
            while self._video and self._video[0][0] <= slot_end:
                taken = self._video.popleft()
            if taken is None:
                self._fill("video", 1)
            else:
                newest = taken[0]
                self._last = taken[1].reformat(width=self.width, height=self.height,
                                               format="rgb24").to_ndarray()
            frames.append(self._last)
        n, have = self.samples_per_unit, min(self._audio_len, self.samples_per_unit)
        audio = np.zeros(n, np.float32)
        audio[:have] = self._audio[:have]
        self._audio[:self._audio_len - have] = self._audio[have:self._audio_len]
        self._audio_len -= have
        self._fill("audio", round((n - have) / self._samples_per_frame))
        if have and self._audio_arrived is not None:
            newest = max(newest or 0.0, self._audio_arrived)
        return AssembledUnit(unit, np.stack(frames), audio, newest, time.monotonic())

    async def run(self, submit: Callable[[AssembledUnit], None], grace_s: float = 0.005) -> None:
        """From the first media on, cut unit after unit and hand each to `submit`; runs until
        cancelled."""
        await self.started.wait()
        unit = 0
        while True:
            due = self.clock.due(unit)
            # 1. never more than EARLY_S before the unit is due
            if (wait := due - EARLY_S - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            # 2. then as soon as its audio is complete, at the latest when it is due + grace
            if self._audio_len < self.samples_per_unit:
                self._complete.clear()
                try:
                    await asyncio.wait_for(self._complete.wait(), max(0.0, due + grace_s - time.monotonic()))
                except TimeoutError:
                    pass  # its time is up: it goes with what arrived
            submit(self.cut(unit))
            unit += 1
