"""The HTTP routes on a fake engine: the page and its files, characters, health and readiness,
metrics, and every refusal of POST /offer with its status and reason."""
from __future__ import annotations

import json

import aiohttp
import pytest

from server.metrics import Metrics
from server.runtime.timings import Transfer, UnitRecord
from tests.server.call_client import CallClient
from tests.server.call_helpers import front_end
from tests.server.test_frontend_offer import make_offer


async def get(url: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, dict(r.headers), await r.read()


async def post(url: str, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict]:
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers or {}) as r:
        return r.status, dict(r.headers), await r.json()


async def test_the_page_its_files_and_the_characters_are_served():
    async with front_end() as (_, url):
        status, headers, body = await get(url + "/")
        assert status == 200 and b"<video id=\"remote\"" in body and headers["Content-Type"].startswith("text/html")
        for f in ("client.js", "style.css"):
            assert (await get(f"{url}/static/{f}"))[0] == 200
        status, _, body = await get(url + "/characters")
        listing = json.loads(body)
        assert listing["default"] == "ada"
        assert [c["name"] for c in listing["characters"]] == ["Ada", "Bram"]
        for c in listing["characters"]:
            status, headers, image = await get(url + c["image"])
            assert status == 200 and image.startswith(b"\x89PNG")
        assert (await get(url + "/characters/nobody/image.png"))[0] == 404
        config = json.loads((await get(url + "/config"))[2])
        assert config == {"iceServers": [], "authRequired": False, "pingSeconds": 1.0, "livenessSeconds": 2.5}


async def test_healthz_is_up_at_once_and_readyz_waits_for_the_workers():
    async with front_end(start=False) as (front, url):
        assert (await get(url + "/healthz"))[0] == 200
        status, _, body = await get(url + "/readyz")
        assert status == 503 and b"not ready" in body
        await front.engine.start()
        assert (await get(url + "/readyz"))[0] == 200


async def test_metrics_carry_build_info_and_budget_buckets():
    m = Metrics("tiny", "gloo")
    m.observe_record(UnitRecord(1, 0, {"thinker": {"encode": 0.02}, "performer": {"solve": 0.05}},
                                {"thinker->performer": Transfer(1000, 0.001)}, 0.12,
                                {"thinker": False, "performer": True}, 0.0))
    text = m.render().decode()
    assert 'duplex_build_info{preset="tiny",transport="gloo",version=' in text
    assert 'duplex_stage_duration_seconds_count{role="performer",stage="solve"} 1.0' in text
    assert 'duplex_transfer_bytes_total{direction="thinker->performer"} 1000.0' in text
    assert 'duplex_deadline_misses_total{role="performer"} 1.0' in text
    for le in ("0.16", "0.2"):
        assert f'duplex_unit_latency_seconds_bucket{{le="{le}"}}' in text
        assert f'duplex_stage_duration_seconds_bucket{{le="{le}",role="performer",stage="solve"}}' in text
    async with front_end() as (_, url):
        status, headers, body = await get(url + "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert b"duplex_sessions_active 0.0" in body and b"duplex_kv_cache_tokens 0.0" in body


@pytest.mark.parametrize("body, status, says", [
    pytest.param(b"{oops", 400, "not valid JSON", id="malformed-json"),
    pytest.param(json.dumps({"type": "offer", "sdp": "garbage"}).encode(), 400, "v=0", id="garbage-sdp"),
    pytest.param(b"x" * 70_000, 413, "at most 65536", id="oversize"),
])
async def test_a_bad_offer_is_refused_and_changes_nothing(body, status, says):
    async with front_end() as (front, url):
        got, _, answer = await post(url + "/offer", body)
        assert got == status and says in answer["error"]
        assert front.calls == {} and front.engine.active == 0


async def test_an_offer_without_media_or_with_an_unknown_character_is_refused():
    async with front_end() as (front, url):
        no_video = json.dumps({"type": "offer", "sdp": await make_offer(video=False)}).encode()
        status, _, answer = await post(url + "/offer", no_video)
        assert status == 400 and "no video" in answer["error"]
        who = json.dumps({"type": "offer", "sdp": await make_offer(), "character": "zed"}).encode()
        status, _, answer = await post(url + "/offer", who)
        assert status == 400 and "unknown character 'zed'" in answer["error"] and "ada" in answer["error"]
        assert front.engine.active == 0


async def test_the_token_is_required_when_set():
    async with front_end(auth_token="s3cret") as (front, url):
        offer = json.dumps({"type": "offer", "sdp": await make_offer()}).encode()
        for headers in ({}, {"Authorization": "Bearer nope"}):
            status, _, answer = await post(url + "/offer", offer, headers)
            assert status == 401 and "token" in answer["error"]
        assert front.engine.active == 0
        assert json.loads((await get(url + "/config"))[2])["authRequired"] is True
        client = CallClient(url)
        await client.call(token="s3cret")
        assert front.engine.active == 1
        await client.close()


async def test_a_call_past_capacity_gets_503_with_retry_after():
    async with front_end(capacity=1) as (front, url):
        first = CallClient(url)
        await first.call()
        status, headers, answer = await post(url + "/offer", json.dumps(
            {"type": "offer", "sdp": await make_offer()}).encode())
        assert status == 503 and headers["Retry-After"] == "2" and "busy" in answer["error"]
        assert (await get(url + "/readyz"))[0] == 503
        metrics = (await get(url + "/metrics"))[2].decode()
        assert 'duplex_sessions_total{outcome="rejected"} 1.0' in metrics
        assert len(front.calls) == 1
        await first.close()
