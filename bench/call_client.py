"""A WebRTC caller of `duplex serve`, as the web page calls: a synthetic camera (320x240 at
30 fps by default, a moving pattern) and microphone (a 220 Hz tone, 48 kHz, 20 ms frames), a data
channel that pings every second, and a record of everything that comes back with arrival times
(and each frame's pts, for lip-sync). `duplex bench soak` calls with it, and so do the call tests
(tests/server/call_client.py re-exports it). It starts nothing: the daemon is the caller's to run.

For calls a trained character can answer: `CardCamera` (a hand holding up a coloured card, as
model/data draws them) and `ScriptedMicrophone` (silence, and what `say` queues), and
`keep_audio=True` to keep the character's voice (`heard`).
"""
from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import av
import numpy as np
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription,
                    VideoStreamTrack)
from aiortc.mediastreams import MediaStreamError

from model.config import FPS, UNIT_SECONDS
from server.frontend.call import use_loopback_candidates

MIC_RATE, MIC_FRAME = 48_000, 960


class SyntheticCamera(VideoStreamTrack):
    """A width x height pattern (320x240 by default) that moves every frame, at aiortc's
    default 30 fps."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        y, x = np.mgrid[0:height, 0:width]
        self._base = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        self._n += 1
        frame = av.VideoFrame.from_ndarray(np.roll(self._base, 4 * self._n, axis=1), format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class CardCamera(VideoStreamTrack):
    """A hand holding up a card of `colour` (None: no card) before a `background`, drawn by
    model/data/camera.py as the demonstrator's conversations draw the user's camera."""

    def __init__(self, colour: str | None, width: int = 320, height: int = 240,
                 background: str = "room", seed: int = 0) -> None:
        from model.data.camera import Camera
        super().__init__()
        self._camera = Camera(np.random.default_rng(seed), height, width, background, colour)
        self._n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img, _ = self._camera.frame(self._n)
        self._n += 1
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class PacedMicrophone(MediaStreamTrack):
    """48 kHz mono in 20 ms frames, paced like a microphone; `samples(i)` is frame i."""
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._i = 0
        self._t0: float | None = None

    def samples(self, i: int) -> np.ndarray:
        raise NotImplementedError

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        await asyncio.sleep(max(0.0, self._t0 + self._i * MIC_FRAME / MIC_RATE - time.monotonic()))
        frame = av.AudioFrame.from_ndarray(self.samples(self._i)[None], format="s16", layout="mono")
        frame.sample_rate, frame.pts = MIC_RATE, self._i * MIC_FRAME
        frame.time_base = fractions.Fraction(1, MIC_RATE)
        self._i += 1
        return frame


class SyntheticMicrophone(PacedMicrophone):
    """A 220 Hz tone."""

    def __init__(self) -> None:
        super().__init__()
        t = np.arange(MIC_RATE) / MIC_RATE
        self._tone = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)

    def samples(self, i: int) -> np.ndarray:
        start = (i * MIC_FRAME) % (MIC_RATE - MIC_FRAME)
        return self._tone[start:start + MIC_FRAME]


class ScriptedMicrophone(PacedMicrophone):
    """Silence, and what `say` queues."""

    def __init__(self) -> None:
        super().__init__()
        self._queue = np.zeros(0, np.int16)

    def say(self, x: np.ndarray) -> tuple[float, float]:
        """Queue `x` (float in [-1, 1] at 48 kHz) after what is queued; (start, end) in
        time.monotonic() of when the microphone will play it."""
        pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
        start = time.monotonic() + self._queue.size / MIC_RATE + MIC_FRAME / MIC_RATE
        self._queue = np.concatenate([self._queue, pcm])
        return start, start + pcm.size / MIC_RATE

    def samples(self, i: int) -> np.ndarray:
        out = np.zeros(MIC_FRAME, np.int16)
        n = min(MIC_FRAME, self._queue.size)
        out[:n], self._queue = self._queue[:n], self._queue[n:]
        return out


@dataclass
class Received:
    video: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, width, height)
    video_frames: list[np.ndarray] = field(default_factory=list)  # the last few, RGB
    audio: list[tuple[float, int, int]] = field(default_factory=list)  # (arrival, samples, rate)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    pcm: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, mono float32): keep_audio
    # (arrival, pts in seconds, unwrapped from the first frame's) per kind: the sender's
    # schedule of each frame, for lip-sync (RTP timestamps start at a random origin per track)
    pts: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"video": [], "audio": []})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e.get("type") == kind]

    def heard(self, start: float, end: float) -> np.ndarray:
        """The audio that arrived in [start, end] (monotonic), mono float32 at 48 kHz."""
        parts = [x for t, x in self.pcm if start <= t <= end]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class CallClient:
    """`ping`: the page's pings; `data_channel=False`: none at all (a phone bridge, say);
    `send_media=False`: receive-only (a viewer: no camera, no microphone); `tracks`: the
    camera and microphone to send instead of the synthetic ones; `keep_audio`: keep what the
    character says (`got.pcm`)."""

    def __init__(self, base_url: str, ping: bool = True, data_channel: bool = True,
                 camera: tuple[int, int] = (320, 240), send_media: bool = True,
                 tracks: tuple[MediaStreamTrack, MediaStreamTrack] | None = None, keep_audio: bool = False):
        self.base_url, self.ping, self.camera, self.send_media = base_url, ping, camera, send_media
        self.tracks, self.keep_audio = tracks, keep_audio
        use_loopback_candidates()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.got = Received()
        self.dc = self.pc.createDataChannel("duplex") if data_channel else None
        self._tasks: list[asyncio.Task[Any]] = []
        self.session = ""

    async def call(self, character: str | None = None, token: str | None = None) -> None:
        await self.accept(await self.post_offer(character, token))

    async def post_offer(self, character: str | None = None, token: str | None = None,
                         edit: Callable[[str], str] = lambda sdp: sdp) -> dict[str, Any]:
        """Send the offer (its SDP through `edit`) and return the daemon's answer, unapplied."""
        pc = self.pc
        if self.send_media:
            for track in self.tracks or (SyntheticCamera(*self.camera), SyntheticMicrophone()):
                pc.addTrack(track)
        else:
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        pc.on("track", lambda track: self._tasks.append(asyncio.ensure_future(self._consume(track))))
        if self.dc is not None:
            self.dc.on("message", lambda m: self.got.events.append((time.monotonic(), json.loads(m))))
            self.dc.on("open", lambda: self._tasks.append(asyncio.ensure_future(self._pings())))
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {"sdp": edit(pc.localDescription.sdp), "type": "offer", "character": character}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base_url}/offer", json=body, headers=headers) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"offer refused: {r.status} {answer}")
        self.session = answer["session"]
        return answer

    async def accept(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))

    async def _consume(self, track: MediaStreamTrack) -> None:
        first: int | None = None
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if frame.pts is not None and frame.time_base is not None:
                    first = frame.pts if first is None else first
                    wrapped = (frame.pts - first) % 2**32  # RTP timestamps are 32-bit
                    self.got.pts[track.kind].append((now, float(wrapped * frame.time_base)))
                if track.kind == "video":
                    self.got.video.append((now, frame.width, frame.height))
                    self.got.video_frames = (self.got.video_frames + [frame.to_ndarray(format="rgb24")])[-4:]
                else:
                    self.got.audio.append((now, frame.samples, frame.sample_rate))
                    if self.keep_audio:
                        x = frame.to_ndarray().reshape(-1, len(frame.layout.channels)).mean(1)
                        self.got.pcm.append((now, (x / 32768).astype(np.float32)))
        except MediaStreamError:
            return

    async def _pings(self) -> None:
        while self.ping:
            if self.dc.readyState == "open":
                self.dc.send(json.dumps({"type": "ping", "t": time.time()}))
            await asyncio.sleep(1.0)

    def cut_network(self) -> None:
        """Make the client's ICE sockets deaf and mute under it, as a closed tab or a pulled
        cable: nothing more leaves (no goodbye, no RTCP, no consent answers) and nothing that
        arrives is read. (aioice's StunProtocol per socket: there is no public way to do it.)"""
        self.ping = False
        transports = [t.sender.transport for t in self.pc.getTransceivers() if t.sender.transport]
        if self.pc.sctp is not None:
            transports.append(self.pc.sctp.transport)
        for dtls in transports:
            for protocol in dtls.transport._connection._protocols:
                if protocol.transport is not None:
                    protocol.transport.sendto = lambda data, addr=None: None
                    protocol.datagram_received = lambda data, addr: None

    def say(self, text: str) -> None:
        self.dc.send(json.dumps({"type": "text", "text": text}))

    async def wait_media(self, timeout: float = 20.0) -> float:
        """Until both video and audio arrive; returns when."""
        deadline = time.monotonic() + timeout
        while not (self.got.video and self.got.audio):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no media within {timeout} s (connection {self.pc.connectionState})")
            await asyncio.sleep(0.05)
        return time.monotonic()

    async def hangup(self) -> None:
        if self.dc is not None and self.dc.readyState == "open":
            self.dc.send(json.dumps({"type": "bye"}))
            await asyncio.sleep(0.1)
        await self.close()

    async def close(self) -> None:
        self.ping = False
        for t in self._tasks:
            t.cancel()
        await self.pc.close()


def lost_share(got: Received, kind: str, start: float, end: float, frame_s: float) -> float:
    """The share of the sender's `kind` stream between the first and the last of its frames that
    arrived in [start, end] (by their pts, the sender's schedule) that never arrived: frames the
    sender skipped or the network lost, whatever the receiver's own scheduling did to arrivals."""
    pts = sorted({p for t, p in got.pts[kind] if start <= t <= end})
    return max(0.0, 1 - len(pts) * frame_s / (pts[-1] - pts[0] + frame_s)) if pts else 1.0


def rates(got: Received, start: float, end: float) -> dict[str, float]:
    """Video fps, audio samples per second and the longest audio gap over [start, end], from
    the first to the last frame that arrived in it; the share of the sender's video and audio
    streams between those frames that never arrived (`video_lost`, `audio_lost`: lost_share, what
    a viewer misses, where an arrival gap a jitter buffer covers is not); and the model's units
    delivered in it (one `latency` event a unit as it starts playing) as a share of the units
    the clock ran: the tracks always send frames (held or silent), so only this counts the
    model's output."""
    video = [t for t, _, _ in got.video if start <= t <= end]
    audio = [(t, n, r) for t, n, r in got.audio if start <= t <= end]
    units = [e for t, e in got.events if e["type"] == "latency" and start <= t <= end]
    delivered = len(units) / ((end - start) / UNIT_SECONDS)
    if len(video) < 2 or len(audio) < 2:
        return {"fps": 0.0, "audio_rate": 0.0, "audio_max_gap_s": end - start, "audio_lost": 1.0,
                "video_lost": 1.0, "sample_rates": [], "units_delivered": delivered}
    return {"units_delivered": delivered, "fps": (len(video) - 1) / (video[-1] - video[0]),
            "audio_rate": sum(n for _, n, _ in audio[:-1]) / (audio[-1][0] - audio[0][0]),
            "audio_max_gap_s": float(np.diff([t for t, _, _ in audio]).max()),
            "audio_lost": lost_share(got, "audio", start, end, audio[0][1] / audio[0][2]),
            "video_lost": lost_share(got, "video", start, end, 1 / FPS),
            "sample_rates": sorted({r for _, _, r in audio})}
