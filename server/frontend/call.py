"""One call from a browser: its peer connection, its session and the pieces between.

  in    the caller's camera and microphone tracks -> UnitAssembler -> session (on the unit clock)
  out   session outputs -> Playout -> AvatarVideoTrack + AvatarAudioTrack; captions and
        latency go to the page on the data channel as each unit starts playing
  clock the unit clock starts with the caller's first media frame (unit_assembler.py), not
        when the session opened: slow ICE gathering (TURN) costs start-up time, not units
  life  any inbound traffic is a sign of life: a media frame, a data-channel message, or any
        packet on the connection's transport (RTCP, DTLS, SCTP: aiortc's transport stats, read
        every WATCH_S), so a caller that only receives and sends reports stays in the call; a
        call silent for `liveness_s` (a closed tab, a lost network: aiortc alone notices only
        after ~30 s of failed consent checks),
        that does not connect, that reaches `max_call_s`, or whose session ends, is ended
Ending a call, whatever the cause: 1. tell the page why (data channel), 2. stop the call's
tasks, 3. close the session (its KV rows and slot are freed), 4. close the peer
connection, 5. count the outcome. Nothing here blocks the loop: media work is PyAV/numpy on
small frames, model work is behind the engine.

ICE: the configured STUN/TURN servers only (aiortc's `iceServers=None` would mean Google's
public STUN server: unreachable on a closed network, and a call should not depend on it), and
a loopback host candidate when the daemon is bound to this machine (aioice leaves 127.0.0.1
out, so a machine with loopback alone could not be called): `use_loopback_candidates()`,
called once by the daemon (and tests' clients), never at import.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine

import aioice.ice
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError

from model.config import ModelConfig
from server.engine import EngineSession
from server.frontend.characters import CharacterEntry
from server.frontend.datachannel import Channel, PageMessageError, parse_message
from server.frontend.playout import Playout
from server.frontend.tracks import AvatarAudioTrack, AvatarVideoTrack
from server.frontend.unit_assembler import AssembledUnit, UnitAssembler
from server.metrics import Metrics
from server.runtime.messages import UnitOutput
from server.runtime.session import SessionEnded
from server.settings import IceServer, Settings

log = logging.getLogger("duplex.call")
WATCH_S = 0.1  # how often the liveness and length limits (and the inbound packet count) are checked
NO_MEDIA_START_S = 0.5  # connected, yet no media this long after (a receive-only caller): the clock starts
FLUSH_S = 0.5  # at most this long to let the "ended" event leave before the peer closes
LOOPBACK = "127.0.0.1"


def rtc_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """The configured servers only; an empty list means host candidates only, never a default."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.urls, username=s.username,
                                                     credential=s.credential) for s in servers])


def use_loopback_candidates() -> None:
    """Make aioice gather a 127.0.0.1 host candidate too (idempotent)."""
    gather: Callable[[bool, bool], list[str]] = aioice.ice.get_host_addresses
    if getattr(gather, "adds_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = gather(use_ipv4, use_ipv6)
        return addresses + [LOOPBACK] if use_ipv4 and LOOPBACK not in addresses else addresses

    with_loopback.adds_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


class Call:
    def __init__(self, session: EngineSession, character: CharacterEntry, cfg: ModelConfig,
                 settings: Settings, metrics: Metrics, on_end: Callable[["Call"], None]):
        self.id, self.session, self.character = session.name, session, character
        self.settings, self.metrics, self._on_end = settings, metrics, on_end
        self.started = time.monotonic()
        self.last_seen: float | None = None  # the caller's last media frame or data-channel message
        self.end_reason = ""
        self.done = asyncio.Event()
        self.channel = Channel()
        self.assembler = UnitAssembler(session.clock, cfg.video.width, cfg.video.height,
                                       cfg.audio.sample_rate, cfg.audio.samples_per_unit, metrics)
        self.playout = Playout(session.clock, self.assembler.started, metrics, self._on_leave,
                               self._on_media_error)
        self.pc = RTCPeerConnection(rtc_configuration(settings.ice_servers))
        self._in: dict[int, tuple[float | None, float]] = {}  # unit -> (newest input, cut at)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ending: asyncio.Task[None] | None = None  # the task that ends the call
        metrics.sessions_active.inc()  # from here on, every Call is ended exactly once

    # -- set-up -------------------------------------------------------------------------------
    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Negotiate the offer; the call runs from here until `end`."""
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        w, h = self.assembler.width, self.assembler.height
        pc.addTrack(AvatarVideoTrack(self.playout, w, h))
        pc.addTrack(AvatarAudioTrack(self.playout))
        await pc.setLocalDescription(await pc.createAnswer())
        self._spawn(self.assembler.run(self._submit), "unit clock")
        self._spawn(self._pump(), "playout")
        self._spawn(self._watch(), "watchdog")
        log.info("call %s: started with %s", self.id, self.character.name)
        return pc.localDescription

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guard(coro, what))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, coro: Coroutine[Any, Any, None], what: str) -> None:
        """Cancellation passes through; anything unexpected is counted, logged with its
        traceback, and ends the call with the reason."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.metrics.media_errors.labels(what).inc()
            log.exception("call %s: the %s failed", self.id, what)
            self.end(f"the server's {what} failed: {e}", "error")

    # -- in -----------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind in ("audio", "video"):
            self._spawn(self._read(track), f"{track.kind} input")

    async def _read(self, track: MediaStreamTrack) -> None:
        push = self.assembler.push_video if track.kind == "video" else self.assembler.push_audio
        try:
            while True:
                frame = await track.recv()
                self.last_seen = now = time.monotonic()
                push(frame, now)
        except MediaStreamError:
            return  # the caller stopped sending; liveness decides whether the call is over

    def _submit(self, unit: AssembledUnit) -> None:
        self._in[unit.unit] = (unit.last_arrival, unit.cut_at)
        try:
            self.session.submit(unit.frames[None], unit.audio[None], clock_unit=unit.unit)
        except SessionEnded:
            pass  # the watchdog ends the call with the session's reason

    # -- out ----------------------------------------------------------------------------------
    async def _pump(self) -> None:
        while True:
            out = await self.session.outputs.next()
            self.metrics.unit_latency.observe(out.signal_to_signal_s)
            self.playout.push(out)

    def _on_leave(self, out: UnitOutput, pushed_at: float, left: float) -> None:
        """The first frame of `out` is leaving: the unit's captions and latency go to the page.
        out_ms = output ready -> leaving, of which wait_ms in the playout schedule (the playout
        delay that absorbs the model's jitter); the rest is hand-over and conversion."""
        newest, cut_at = self._in.pop(out.clock_unit, (None, 0.0))
        for u in [u for u in self._in if u < out.clock_unit]:
            del self._in[u]  # units whose output was dropped
        out_s = left - out.ready_at
        self.metrics.frontend_overhead.labels("out").observe(out_s)
        in_ms = None
        if newest is not None:
            in_s = cut_at - newest
            self.metrics.frontend_overhead.labels("in").observe(in_s)
            in_ms = round(in_s * 1e3, 2)
        if out.caption:
            self.channel.send("caption", unit=out.clock_unit, text=out.caption)
        self.channel.send("latency", unit=out.clock_unit, model_ms=round(out.signal_to_signal_s * 1e3, 2),
                          in_ms=in_ms, out_ms=round(out_s * 1e3, 2), wait_ms=round((left - pushed_at) * 1e3, 2),
                          steps=out.steps, top_steps=out.top_steps, skipped=out.skipped)

    def _on_media_error(self, what: str, error: BaseException) -> None:
        self.end(f"the server's {what} failed: {error}", "error")

    # -- the page -----------------------------------------------------------------------------
    def _on_datachannel(self, dc: RTCDataChannel) -> None:
        self.channel.dc = dc
        self.last_seen = time.monotonic()
        dc.on("message", self._on_message)
        self.channel.send("hello", session=self.id, character=self.character.name)

    def _on_message(self, raw: str | bytes) -> None:
        """Runs inside aiortc's DTLS receive loop: nothing may escape, or the call's media dies.
        A bad message is ignored (the page hears of it in a throttled `error` event, the log in
        a throttled line); anything else unexpected is counted, logged and ends the call."""
        now = self.last_seen = time.monotonic()
        try:
            msg = parse_message(raw)
        except PageMessageError as e:
            if n := self.channel.bad.note(now):
                log.warning("call %s: ignored %d page message(s) (%d in this call), the last: %s",
                            self.id, n, self.channel.bad.total, e)
                self.channel.send("error", reason=f"message ignored: {e}", ignored=n)
            return
        try:
            if msg.type == "text":
                self.channel.send("text", text=msg.text, delivered=self.session.submit_text(msg.text))
            elif msg.type == "bye":
                self.end("you hung up", "ok")
        except Exception as e:  # never into aiortc's loop
            self.metrics.media_errors.labels("data channel").inc()
            log.exception("call %s: a %s message from the page failed", self.id, msg.type)
            self.end(f"the server's data channel failed: {e}", "error")

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected" and not self.assembler.started.is_set():
            self._spawn(self._start_without_media(), "unit clock")
        if self.pc.connectionState in ("failed", "closed"):
            self.end(f"the connection was lost ({self.pc.connectionState})", "dropped")

    async def _start_without_media(self) -> None:
        """A caller that sends no media (receive-only) still gets the avatar: the clock starts
        NO_MEDIA_START_S after the connection, the model hearing silence and seeing grey."""
        await asyncio.sleep(NO_MEDIA_START_S)
        self.assembler.start(time.monotonic())

    async def _inbound_packets(self) -> int:
        """Packets received on the call's transport(s) so far: media, RTCP, DTLS, data channel."""
        report = await self.pc.getStats()
        return sum(s.packetsReceived for s in report.values() if s.type == "transport")

    async def _watch(self) -> None:
        s = self.settings
        inbound = 0
        while True:
            await asyncio.sleep(WATCH_S)
            now = time.monotonic()
            if self.pc.connectionState == "connected" and (count := await self._inbound_packets()) > inbound:
                inbound, self.last_seen = count, now
            if (ended := self.session.end) is not None:
                self.end(f"the model stopped: {ended.reason}", "error")
            elif now - self.started > s.max_call_s:
                self.end(f"the call reached its maximum length of {s.max_call_s:g} s", "max_length")
            elif self.last_seen is None and now - self.started > s.connect_timeout_s:
                self.end(f"the call did not connect within {s.connect_timeout_s:g} s", "dropped")
            elif self.last_seen is not None and now - self.last_seen > s.liveness_s:
                self.end(f"nothing heard from the caller for {s.liveness_s:g} s "
                         f"(tab closed or network lost)", "dropped")

    # -- the end ------------------------------------------------------------------------------
    def end(self, reason: str, outcome: str) -> None:
        """End the call (idempotent); `done` is set once it is over."""
        if self._ending is None:
            self.end_reason = reason
            self._ending = asyncio.get_running_loop().create_task(self._end(reason, outcome))

    async def _end(self, reason: str, outcome: str) -> None:
        log.info("call %s: ended (%s): %s", self.id, outcome, reason)
        # 1. tell the page why
        self.channel.send("ended", reason=reason)
        # 2. stop the call's own tasks (this one is not among them)
        for task in list(self._tasks):
            task.cancel()
        # 3. free the session: the pair finishes its units, then its slot and KV rows are free
        self.session.close()
        try:
            # 4. let the event leave, then close the peer connection
            deadline = time.monotonic() + FLUSH_S
            while self.channel.buffered and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await self.pc.close()
        finally:
            # 5. count it, whatever closing the connection did
            self.metrics.sessions_active.dec()
            self.metrics.sessions.labels(outcome).inc()
            self.done.set()
            self._on_end(self)
