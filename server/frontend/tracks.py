"""The avatar's two output tracks: video at 25 fps and audio in 20 ms s16 frames at 48 kHz.

Each is a `recv()` that waits for its frame's slot on the call's one schedule (playout.py,
time.monotonic(); aiortc's own tracks pace on time.time(), which can jump), takes that slot's
frame, or holds the last video frame / plays silence and counts an underrun. They compute
nothing. A closed peer (MediaStreamError) and cancellation end them quietly; anything else is
counted, logged with its traceback and ends the call with an event to the page.
"""
from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from server.frontend.playout import AUDIO_FRAME, AUDIO_FRAME_S, AUDIO_RATE, TICK_S, Playout

VIDEO_CLOCK = 90_000  # RTP video clock
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)


class PacedTrack(MediaStreamTrack):
    """One frame every `period` seconds on the playout schedule: `take(i)` gives frame i, or
    None, and then `fill()` is sent and an underrun counted; `stamp(frame, i)` sets its pts."""
    period: float

    def __init__(self, playout: Playout):
        super().__init__()
        self.playout = playout
        self._i: int | None = None
        self._origin = 0.0  # the schedule's origin when _i was chosen

    def take(self, i: int) -> av.VideoFrame | av.AudioFrame | None:
        raise NotImplementedError

    def fill(self) -> av.VideoFrame | av.AudioFrame:
        raise NotImplementedError

    def stamp(self, frame: av.VideoFrame | av.AudioFrame, i: int) -> None:
        raise NotImplementedError

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            await self.playout.started.wait()  # no schedule before the call's first media
            self._i = i = self.playout.next_index(self._i, self._origin, self.period)
            self._origin = self.playout.origin
            await asyncio.sleep(max(0.0, self.playout.due(i, self.period) - time.monotonic()))
            frame = self.take(i)
            if frame is None:
                self.playout.underrun(self.kind, i, self.period)
                frame = self.fill()
            self.stamp(frame, i)
            return frame
        except (asyncio.CancelledError, MediaStreamError):
            raise
        except Exception as e:
            self.playout.fail(self.kind, e)
            raise MediaStreamError(f"{self.kind} output failed: {e}") from e


class AvatarVideoTrack(PacedTrack):
    """25 fps; an underrun holds the last frame."""
    kind = "video"
    period = TICK_S

    def __init__(self, playout: Playout, width: int, height: int):
        super().__init__(playout)
        self._last = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")

    def take(self, i: int) -> av.VideoFrame | None:
        frame = self.playout.take_video(i)
        if frame is not None:
            self._last = frame  # the encoder is done with it: aiortc calls recv() after encoding
        return frame

    def fill(self) -> av.VideoFrame:
        return self._last

    def stamp(self, frame: av.VideoFrame, i: int) -> None:
        frame.pts, frame.time_base = round(i * TICK_S * VIDEO_CLOCK), VIDEO_TIME_BASE


class AvatarAudioTrack(PacedTrack):
    """20 ms s16 frames at 48 kHz; an underrun plays silence."""
    kind = "audio"
    period = AUDIO_FRAME_S

    def __init__(self, playout: Playout):
        super().__init__(playout)
        self._silence = av.AudioFrame.from_ndarray(np.zeros((1, AUDIO_FRAME), np.int16), format="s16",
                                                   layout="mono")
        self._silence.sample_rate = AUDIO_RATE

    def take(self, i: int) -> av.AudioFrame | None:
        return self.playout.take_audio(i)

    def fill(self) -> av.AudioFrame:
        return self._silence

    def stamp(self, frame: av.AudioFrame, i: int) -> None:
        frame.pts, frame.time_base = i * AUDIO_FRAME, AUDIO_TIME_BASE
