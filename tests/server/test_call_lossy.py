"""A call whose every packet crosses a lossy path (5 % loss, 0-50 ms jitter, each way) keeps
going: the model's units keep arriving, the avatar's video keeps its frame rate, and its audio
and video stay aligned.

The path is a UDP relay in the test (the kernel here has no netem qdisc): the offer's and the
answer's loopback ICE candidates are rewritten to the relay's two sockets, so the daemon sends
to one and the client to the other, each seeing the relay as the other side. The relay drops a
packet with probability 5 % and delays each other one by a uniform 0-50 ms (so packets also
reorder), from a seeded generator per direction; ICE, DTLS, SCTP, RTP and RTCP all cross it.

Lip-sync, as asserted: each output frame carries the daemon's playout schedule as its pts (one
schedule for both tracks), so a frame's arrival minus its pts is how late it came. Loss, jitter,
retransmissions and a receiver stalled for a moment only ever add to that, so per second of the
window the least of it, for video minus for audio, is the A/V skew the daemon sent. Drift is a
trend: the median skew of the window's last three seconds must lie within SKEW_DRIFT_S of its
first three's (a drift of 7 ms a second or more fails it), and no one second may stray by more
than a unit from the window's median. (A single second is not held to the drift bound: on a
loaded 2-core CI box one second's least video lateness once rose 70 ms above its neighbours',
the others within 40 ms, and a second's median once rose 180 ms.) Every second of the window
also brings video and audio frames; the model's units are counted over it.
"""
from __future__ import annotations

import asyncio
import random
import re
import time

import numpy as np
import pytest

from model.config import UNIT_SECONDS
from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric

pytestmark = pytest.mark.timeout(120)
LOSS, JITTER_S, SEED = 0.05, 0.050, 1234
SETTLE_S, WINDOW_S = 3.0, 9.0  # the window starts once the receivers' jitter buffers have filled
SKEW_DRIFT_S = UNIT_SECONDS / 4
LOOPBACK = "127.0.0.1"
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ .*$", re.I)


class Hop(asyncio.DatagramProtocol):
    """One socket of the relay: what it receives from `peer` it passes to the other socket,
    which sends it on to that socket's peer, or drops it; anything from elsewhere is dropped."""

    def __init__(self, rng: random.Random):
        self.rng, self.peer, self.other = rng, ("", 0), None
        self.transport: asyncio.DatagramTransport | None = None
        self.passed = self.dropped = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if addr[:2] != self.peer:
            return  # the daemon's checks from its other host candidates: not on this path
        if self.rng.random() < LOSS:
            self.dropped += 1
            return
        self.passed += 1
        asyncio.get_running_loop().call_later(self.rng.uniform(0, JITTER_S), self.other.send, data)

    def send(self, data: bytes) -> None:
        if not self.transport.is_closing():  # (packets still in flight when the test closes it)
            self.transport.sendto(data, self.peer)


def rewrite(sdp: str, port: int) -> tuple[str, int]:
    """`sdp` with only its loopback host candidate, moved to `port`; and the port it had."""
    lines, found = [], 0
    for line in sdp.splitlines():
        m = CANDIDATE.match(line)
        if m and m.group(1) == LOOPBACK and not found:
            found = int(m.group(2))
            line = line.replace(f" {LOOPBACK} {found} ", f" {LOOPBACK} {port} ")
        elif m:
            continue
        lines.append(line)
    assert found, f"no {LOOPBACK} candidate in:\n{sdp}"
    return "\r\n".join(lines) + "\r\n", found


def skew_per_second(got, start: float, end: float) -> list[float]:
    """Per whole second of [start, end): min(arrival - pts) of video minus that of audio."""
    out = []
    for lo in np.arange(start, end - 0.999, 1.0):
        least = {k: min(t - p for t, p in got.pts[k] if lo <= t < lo + 1) for k in ("video", "audio")}
        out.append(float(least["video"] - least["audio"]))
    return out


async def test_a_call_through_5pc_loss_and_50ms_jitter_keeps_its_units_fps_and_lip_sync(daemon):
    loop = asyncio.get_running_loop()
    to_client = Hop(random.Random(SEED))  # receives from the daemon
    to_daemon = Hop(random.Random(SEED + 1))  # receives from the client
    to_client.other, to_daemon.other = to_daemon, to_client
    await loop.create_datagram_endpoint(lambda: to_client, local_addr=(LOOPBACK, 0))
    await loop.create_datagram_endpoint(lambda: to_daemon, local_addr=(LOOPBACK, 0))
    client = CallClient(daemon.url)
    try:
        offer_port = {}

        def via_relay(sdp: str) -> str:
            sdp, offer_port["client"] = rewrite(sdp, to_client.transport.get_extra_info("sockname")[1])
            return sdp

        answer = await client.post_offer(edit=via_relay)
        answer["sdp"], daemon_port = rewrite(answer["sdp"], to_daemon.transport.get_extra_info("sockname")[1])
        to_client.peer, to_daemon.peer = (LOOPBACK, daemon_port), (LOOPBACK, offer_port["client"])
        await client.accept(answer)
        t0 = await client.wait_media(timeout=30)
        start, end = t0 + SETTLE_S, t0 + SETTLE_S + WINDOW_S
        await asyncio.sleep(end - time.monotonic() + 0.3)
        active = metric(daemon.metrics(), "duplex_sessions_active")
        got = client.got
        r = rates(got, start, end)
        state, ended = client.pc.connectionState, got.of("ended")
        await client.hangup()
    finally:
        await client.close()
        to_client.transport.close()
        to_daemon.transport.close()

    paths = {name: {"passed": h.passed, "dropped": h.dropped, "loss": h.dropped / max(1, h.passed + h.dropped)}
             for name, h in (("daemon->client", to_client), ("client->daemon", to_daemon))}
    skew = skew_per_second(got, start, end)
    print(f"through the relay: {paths}; {r}; A/V skew per second, ms: {[round(s * 1e3) for s in skew]}")
    for name, p in paths.items():  # the path really was lossy, both ways
        assert p["passed"] > 300 and 0.02 <= p["loss"] <= 0.09, f"{name}: {p}"
    assert not ended and state == "connected" and active == 1, \
        f"the call ended: {ended}, connection {state}, sessions active {active}"
    assert r["units_delivered"] >= 0.8, f"the model's units through the lossy path: {r}"
    assert r["fps"] >= 20, f"video through the lossy path: {r}"
    # every second: video and audio arrive (the units' events ride the data channel, whose
    # retransmissions under loss deliver them in bursts: they are counted over the window above)
    for lo in np.arange(start, end - 0.999, 1.0):
        second = {"video": sum(1 for t, _, _ in got.video if lo <= t < lo + 1),
                  "audio": sum(1 for t, _, _ in got.audio if lo <= t < lo + 1)}
        assert second["video"] >= 10 and second["audio"] >= 15, \
            f"a second {lo - t0:.0f} s into the call lacks media: {second}"
    shown = f"(per-second A/V skew, ms: {[round(s * 1e3) for s in skew]})"
    drift = float(np.median(skew[-3:]) - np.median(skew[:3]))
    assert abs(drift) <= SKEW_DRIFT_S, f"audio and video drifted apart by {drift * 1e3:.0f} ms over the window {shown}"
    stray = max(abs(s - float(np.median(skew))) for s in skew)
    assert stray <= UNIT_SECONDS, f"one second's A/V skew strayed {stray * 1e3:.0f} ms from the window's {shown}"
