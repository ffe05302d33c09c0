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


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, playout: Playout, width: int, height: int):
        super().__init__()
        self.playout = playout
        self._i: int | None = None
        self._last = av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            self._i = i = self.playout.next_index(self._i, TICK_S)
            await asyncio.sleep(max(0.0, self.playout.due(i, TICK_S) - time.monotonic()))
            frame = self.playout.take_video(i)
            if frame is None:
                self.playout.underrun(self.kind, i, TICK_S)
                frame = self._last
            self._last = frame  # the encoder is done with it: aiortc calls recv() after encoding
            frame.pts, frame.time_base = round(i * TICK_S * VIDEO_CLOCK), VIDEO_TIME_BASE
            return frame
        except (asyncio.CancelledError, MediaStreamError):
            raise
        except Exception as e:
            self.playout.fail(self.kind, e)
            raise MediaStreamError(f"video output failed: {e}") from e


class AvatarAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, playout: Playout):
        super().__init__()
        self.playout = playout
        self._j: int | None = None
        self._silence = av.AudioFrame.from_ndarray(np.zeros((1, AUDIO_FRAME), np.int16), format="s16",
                                                   layout="mono")
        self._silence.sample_rate = AUDIO_RATE

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        try:
            self._j = j = self.playout.next_index(self._j, AUDIO_FRAME_S)
            await asyncio.sleep(max(0.0, self.playout.due(j, AUDIO_FRAME_S) - time.monotonic()))
            frame = self.playout.take_audio(j)
            if frame is None:
                self.playout.underrun(self.kind, j, AUDIO_FRAME_S)
                frame = self._silence
            frame.pts, frame.time_base = j * AUDIO_FRAME, AUDIO_TIME_BASE
            return frame
        except (asyncio.CancelledError, MediaStreamError):
            raise
        except Exception as e:
            self.playout.fail(self.kind, e)
            raise MediaStreamError(f"audio output failed: {e}") from e
