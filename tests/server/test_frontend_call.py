"""Whole calls through the front end on a fake engine, with an aiortc client on loopback: the
engine's units come back as video, audio, captions and latency; typed text reaches the engine;
and every way a call ends (hang up, a silent page, no connection, the length limit, an engine
failure, shutdown) frees it and tells the page why."""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import numpy as np
import pytest

from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import front_end, until
from tests.server.fake_engine import unit_colour
from tests.server.test_frontend_offer import make_offer

pytestmark = pytest.mark.timeout(60)


def ended(client: CallClient) -> list[str]:
    return [e["reason"] for e in client.got.of("ended")]


async def test_a_call_plays_the_engines_units_with_captions_and_latency():
    async with front_end() as (front, url):
        client = CallClient(url)
        await client.call(character="bram")
        t0 = await client.wait_media()
        client.say("hi there")
        await asyncio.sleep(2.5)
        r = rates(client.got, t0 + 0.5, t0 + 2.5)
        assert r["units_delivered"] >= 0.8, r  # units of the engine, not held frames (+-1 at the edges)
        assert r["fps"] >= 24 and r["audio_rate"] >= 0.95 * 48_000 and r["sample_rates"] == [48_000], r
        assert r["audio_max_gap_s"] < 0.1, r
        frame = client.got.video_frames[-1]
        centre = frame[frame.shape[0] // 2, frame.shape[1] // 2].astype(int)
        assert min(np.abs(centre - unit_colour(n)).max() for n in range(200)) <= 16, centre
        session = front.engine.started[0]
        [call] = front.calls.values()
        assert call.character.name == "Bram" and call.id == session.name
        assert session.texts == ["hi there"]
        assert {"type": "text", "text": "hi there", "delivered": True} in client.got.of("text")
        captions = [e["text"] for e in client.got.of("caption")]
        assert "heard: hi there" in captions and sum(c.startswith("unit ") for c in captions) >= 10
        lat = client.got.of("latency")
        assert len(lat) >= 10 and all(e["out_ms"] >= 0 and e["model_ms"] > 0 for e in lat)
        assert client.got.of("hello")[0]["character"] == "Bram"
        await client.hangup()
        await until(lambda: not front.calls, "the call ends after bye", 3)
        assert session.end is not None and call.end_reason == "you hung up"
        assert 'duplex_sessions_total{outcome="ok"} 1.0' in front.metrics.render().decode()


async def test_a_caller_that_sends_media_but_no_pings_and_no_data_channel_stays_in_the_call():
    async with front_end(liveness_s=1.0) as (front, url):
        client = CallClient(url, data_channel=False)  # a phone bridge: media only
        await client.call()
        await client.wait_media()
        await asyncio.sleep(2.5)  # well past the liveness limit
        assert len(front.calls) == 1, "media alone keeps the call alive"
        assert client.got.video[-1][0] > time.monotonic() - 0.5, "and its media still flows"
        await client.close()


async def test_a_caller_that_only_receives_and_reports_stays_in_the_call():
    async with front_end() as (front, url):  # the default liveness limit: 2 s
        # no camera, no microphone, no data channel: only RTCP reports (and DTLS) come in,
        # each 0.5-1.5 s (aiortc's receiver reports)
        client = CallClient(url, send_media=False, data_channel=False)
        await client.call()
        await client.wait_media()
        await asyncio.sleep(4.5)  # well past the liveness limit
        assert len(front.calls) == 1, "RTCP alone keeps the call alive"
        await client.close()


async def test_a_receive_only_caller_gets_the_avatar_though_it_sends_no_media():
    async with front_end() as (front, url):
        client = CallClient(url, send_media=False)  # the unit clock cannot start with its media
        await client.call()
        t0 = await client.wait_media()
        await asyncio.sleep(1.5)
        assert rates(client.got, t0 + 0.3, t0 + 1.5)["units_delivered"] >= 0.8
        assert front.engine.started[0].submitted, "units went to the engine on the clock"
        await client.close()


async def test_a_page_that_goes_silent_is_ended_within_the_liveness_limit():
    async with front_end(liveness_s=1.0) as (front, url):
        client = CallClient(url)
        await client.call()
        await client.wait_media()
        client.cut_network()  # nothing more leaves: no pings, no media, no RTCP
        [call] = front.calls.values()
        took = await until(lambda: not front.calls, "a silent page's call ends", 3)
        assert took < 1.5
        assert front.engine.active == 0, "the session is freed"
        assert "nothing heard from the caller for 1 s" in call.end_reason  # (the page cannot hear it)
        assert 'duplex_sessions_total{outcome="dropped"} 1.0' in front.metrics.render().decode()
        await client.close()


async def test_a_call_that_never_connects_is_ended():
    async with front_end(connect_timeout_s=1.0) as (front, url):
        body = json.dumps({"type": "offer", "sdp": await make_offer()})
        async with aiohttp.ClientSession() as s, s.post(url + "/offer", data=body) as r:
            assert r.status == 200  # and the client never applies the answer
        [call] = front.calls.values()
        await until(lambda: not front.calls, "an unconnected call ends", 3)
        assert front.engine.active == 0 and front.engine.started[0].end is not None
        assert "did not connect within 1 s" in call.end_reason


async def test_a_call_ends_at_its_maximum_length():
    async with front_end(max_call_s=1.5) as (front, url):
        client = CallClient(url)
        await client.call()
        await until(lambda: ended(client), "the length limit", 4)
        assert "maximum length of 1.5 s" in ended(client)[0]
        await until(lambda: not front.calls, "the call is gone", 3)
        assert 'duplex_sessions_total{outcome="max_length"} 1.0' in front.metrics.render().decode()
        await client.close()


async def test_an_engine_failure_ends_the_call_with_its_reason():
    async with front_end() as (front, url):
        client = CallClient(url)
        await client.call()
        await client.wait_media()
        front.engine.fail_session(client.session, "worker fault: thinker (pid 1) was killed by SIGKILL")
        await until(lambda: ended(client), "the page hears of the fault", 3)
        assert "thinker (pid 1) was killed by SIGKILL" in ended(client)[0]
        await until(lambda: not front.calls, "the call is gone", 3)
        assert 'duplex_sessions_total{outcome="error"} 1.0' in front.metrics.render().decode()
        await client.close()


async def test_a_drain_refuses_new_calls_at_once_lets_calls_go_on_then_ends_them():
    async with front_end(capacity=2) as (front, url):
        clients = [CallClient(url), CallClient(url)]
        for c in clients:
            await c.call()
            await c.wait_media()
        front.stop_accepting(drain_s=1.5)
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/readyz") as r:
                assert r.status == 503 and "draining" in (await r.json())["reason"]
            body = json.dumps({"type": "offer", "sdp": await make_offer()})
            async with s.post(url + "/offer", data=body) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
                assert "draining" in (await r.json())["error"]
        assert 'duplex_draining 1.0' in front.metrics.render().decode()
        for c in clients:
            await until(lambda c=c: c.got.of("draining"), "each page hears of the drain", 2)
            assert c.got.of("draining")[0]["seconds"] == 1.5
        # one caller hangs up during the drain; the other's call goes on until the drain ends
        await clients[0].hangup()
        t0 = time.monotonic()
        await front.drain(1.5, asyncio.Event())
        assert 1.3 < time.monotonic() - t0 < 2.0
        r = rates(clients[1].got, t0 + 0.2, t0 + 1.3)
        assert r["units_delivered"] >= 0.8 and r["video_lost"] < 0.1 and r["audio_max_gap_s"] < 0.1, \
            f"units and media went on while draining: {r}"
        await front.shutdown("server draining")
        assert not front.calls and front.engine.active == 0
        await until(lambda: ended(clients[1]), "the page is told", 2)
        assert ended(clients[1]) == ["server draining"]
        for c in clients:
            await c.close()


async def test_a_drain_ends_early_once_every_call_has_ended():
    async with front_end(capacity=1) as (front, url):
        client = CallClient(url)
        await client.call()
        await client.wait_media()
        front.stop_accepting(drain_s=30)
        hurry = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, hurry.set)  # a second SIGTERM
        t0 = time.monotonic()
        await front.drain(30, hurry)
        assert time.monotonic() - t0 < 1.0 and front.calls, "hurried: the call is still there to end"
        await client.hangup()
        await until(lambda: not front.calls, "the call is gone", 2)
        t0 = time.monotonic()
        await front.drain(30, asyncio.Event())
        assert time.monotonic() - t0 < 0.2, "no call left: the drain is over"
        await client.close()