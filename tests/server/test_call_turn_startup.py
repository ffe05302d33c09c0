"""A daemon configured with a TURN server that never answers: the server's ICE gathering waits
for it (aioice gives up after 5 s) before it can answer the offer, long after the session was
prefilled. The unit clock starts with the call's first media, not at the prefill, so the call
starts with no burst of overdue units and holds its unit rate (before, it was ended "fell
behind" 0.1 s after it started)."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric

pytestmark = pytest.mark.timeout(120)

# a UDP port that takes every packet and answers none: a TURN server that is down or filtered
DEAD_TURN = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
DEAD_TURN.bind(("127.0.0.1", 0))
DAEMON_ARGS = ("--ice-servers", json.dumps([{"urls": [f"turn:127.0.0.1:{DEAD_TURN.getsockname()[1]}"],
                                            "username": "duplex", "credential": "secret"}]))


async def test_a_call_through_a_turn_server_that_never_answers_starts_and_holds_its_rate(daemon):
    client = CallClient(daemon.url)
    posted = time.monotonic()
    await client.call()
    answered = time.monotonic() - posted
    assert answered > 3, f"the offer was answered in {answered:.1f} s: the dead TURN server was not tried"
    assert DEAD_TURN.recv(2048, socket.MSG_DONTWAIT), "the daemon asked the TURN server"
    t0 = await client.wait_media()
    await asyncio.sleep(4.0)
    r = rates(client.got, t0 + 0.5, t0 + 4.0)
    assert client.got.of("ended") == [], client.got.of("ended")
    assert r["units_delivered"] >= 0.8, r  # no burst of overdue units, no skipping at the start
    first = client.got.of("latency")[0]
    assert first["unit"] <= 2 and first["skipped"] == 0, first
    await client.hangup()
    await asyncio.sleep(0.5)
    assert metric(daemon.metrics(), "duplex_sessions_total", 'outcome="ok"') == 1
