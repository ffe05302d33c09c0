"""Bad input to `duplex serve` while a call is running: malformed JSON, a garbage SDP, an
oversize body, an offer without media, a missing or wrong token and one call past capacity
are each refused with their status and reason, and the running call is not disturbed."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric
from tests.server.test_frontend_offer import make_offer

pytestmark = pytest.mark.timeout(120)
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAEMON_ARGS = ("--max-sessions", "1")
DAEMON_ENV = {"DUPLEX_AUTH_TOKEN": TOKEN}


async def test_bad_requests_are_refused_and_a_running_call_is_not_disturbed(daemon):
    offer = await make_offer()
    cases = [  # (what, body, headers, status, the reason says)
        ("malformed JSON", b'{"sdp": ', AUTH, 400, "not valid JSON"),
        ("garbage SDP", json.dumps({"type": "offer", "sdp": "m=garbage"}).encode(), AUTH, 400, "v=0"),
        ("oversize body", b"x" * 200_000, AUTH, 413, "at most 65536"),
        ("no media", json.dumps({"type": "offer", "sdp": await make_offer(False, False)}).encode(), AUTH,
         400, "no audio and no video"),
        ("no token", json.dumps({"type": "offer", "sdp": offer}).encode(), {}, 401, "needs an access token"),
        ("wrong token", json.dumps({"type": "offer", "sdp": offer}).encode(),
         {"Authorization": "Bearer guess"}, 401, "not valid"),
        ("past capacity", json.dumps({"type": "offer", "sdp": offer}).encode(), AUTH, 503, "busy"),
    ]
    client = CallClient(daemon.url)
    await client.call(token=TOKEN)
    t0 = await client.wait_media()
    await asyncio.sleep(1.0)
    start = time.monotonic()
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # three rounds over ~3 s, while the call runs
            for what, body, headers, status, says in cases:
                async with http.post(daemon.url + "/offer", data=body, headers=headers) as r:
                    answer = await r.json()
                    assert r.status == status and says in answer["error"], (what, r.status, answer)
                    if status == 503:
                        assert r.headers["Retry-After"].isdigit()
            await asyncio.sleep(1.0)
    end = time.monotonic()
    await asyncio.sleep(0.5)
    r = rates(client.got, start, end)
    assert client.got.of("ended") == [], "the running call goes on"
    assert r["units_delivered"] >= 0.8 and r["video_lost"] < 0.1, r  # the model's units kept coming
    assert r["audio_rate"] >= 0.95 * 48_000 and r["audio_max_gap_s"] < 0.1, r
    assert rates(client.got, t0 + 0.5, start)["video_lost"] < 0.1
    await client.hangup()
    await asyncio.sleep(0.5)
    text = daemon.metrics()
    assert metric(text, "duplex_sessions_total", 'outcome="rejected"') == 3
    assert metric(text, "duplex_sessions_total", 'outcome="ok"') == 1
