"""The HTTP routes on a fake engine: the page and its files, characters, health and readiness,
metrics, every refusal of POST /offer with its status and reason, bodies however they arrive
(split, chunked, slow), the Origin check, and what GET /config hands out with and without the
token (static and minted TURN credentials)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import pytest

from server.metrics import Metrics
from server.runtime.timings import Transfer, UnitRecord
from tests.server.call_client import CallClient
from tests.server.call_helpers import front_end, until
from tests.server.test_frontend_offer import make_offer

TURN = {"urls": ["turn:turn.example.org:3478"], "username": "duplex", "credential": "p4ss"}
STUN = {"urls": ["stun:stun.example.org:3478"]}


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
        assert config == {"iceServers": [], "authRequired": False, "pingSeconds": 1.0, "livenessSeconds": 2.0}


async def test_healthz_is_up_at_once_and_readyz_waits_for_the_workers():
    async with front_end(start=False) as (front, url):
        assert (await get(url + "/healthz"))[0] == 200
        status, _, body = await get(url + "/readyz")
        assert status == 503 and b"not ready" in body
        await front.engine.start()
        assert (await get(url + "/readyz"))[0] == 200


async def test_healthz_says_503_once_no_worker_pair_can_be_started():
    async with front_end() as (front, url):
        front.engine.healthy = False  # as RuntimeEngine says after failed restarts in a row
        status, _, body = await get(url + "/healthz")
        assert status == 503 and b"no worker pair can be started" in body


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


async def raw(url: str, parts: list[bytes], pause_s: float = 0.0, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `parts` as separate TCP segments, `pause_s` apart, on one connection; (status, body)
    of the answer (read until the server closes or `timeout`), status 0 if there was none."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answer = b""
    try:
        for i, part in enumerate(parts):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            await writer.drain()
        async with asyncio.timeout(timeout):
            while data := await reader.read(65536):
                answer += data
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        pass  # what came so far is the answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return (int(head.split()[1]) if head else 0), body


def request_head(length: int | None, extra: str = "") -> bytes:
    size = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
    return (f"POST /offer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{size}"
            f"Connection: close\r\n{extra}\r\n").encode()


async def test_a_body_split_into_many_segments_is_read_whole():
    async with front_end() as (front, url):
        offer = json.dumps({"type": "offer", "sdp": await make_offer()}).encode()
        parts = [request_head(len(offer))] + [offer[i:i + 700] for i in range(0, len(offer), 700)]
        status, answer = await raw(url, parts, pause_s=0.02)
        assert status == 200 and json.loads(answer)["type"] == "answer", answer
        assert front.engine.active == 1


async def test_a_chunked_body_is_read_whole_and_refused_past_the_limit():
    async with front_end() as (front, url):
        offer = json.dumps({"type": "offer", "sdp": await make_offer()}).encode()
        chunks = [b"%x\r\n%s\r\n" % (len(offer[i:i + 500]), offer[i:i + 500]) for i in range(0, len(offer), 500)]
        status, answer = await raw(url, [request_head(None), *chunks, b"0\r\n\r\n"], pause_s=0.01)
        assert status == 200, answer
        await front.shutdown("next")
        front.accepting = True
        big = [b"4000\r\n" + b" " * 0x4000 + b"\r\n"] * 5  # 80 KiB, no Content-Length
        status, answer = await raw(url, [request_head(None), *big, b"0\r\n\r\n"])
        assert status == 413 and "at most 65536" in json.loads(answer)["error"]
        status, answer = await raw(url, [request_head(None), b"zz\r\nnot a chunk\r\n"])
        assert status == 400


async def test_a_slow_body_gets_408_and_a_slow_head_is_cut_off():
    async with front_end(body_timeout_s=0.5, header_timeout_s=1.0) as (front, url):
        t0 = time.monotonic()
        status, answer = await raw(url, [request_head(1000), b"{", b'"type"'], pause_s=0.3)
        assert status == 408 and "within 0.5 s" in json.loads(answer)["error"]
        assert time.monotonic() - t0 < 4.0  # the answer, then at most LINGER_S to close
        t0 = time.monotonic()
        status, _ = await raw(url, [b"POST /offer HTTP/1.1\r\n", b"Host: x\r\n"], pause_s=0.1)
        assert status == 0 and time.monotonic() - t0 < 3.0  # closed, no answer
        assert front.engine.active == 0


@pytest.mark.parametrize("body, headers, status, says", [
    pytest.param(b"[" * 5000, {}, 400, "nested too deeply", id="deep-json"),
    pytest.param(b"{}", {"Authorization": "Bearer s3cr\xc3\xa9t"}, 401, "not valid", id="non-ascii-token"),
    pytest.param(b"{}", {"Authorization": "Bearer \xff\xfe"}, 401, "not valid", id="non-utf8-token"),
    pytest.param(b"{}", {"Origin": "http://evil.example"}, 403, "may not call", id="cross-site"),
])
async def test_hostile_requests_get_a_4xx_with_the_reason(body, headers, status, says):
    async with front_end(auth_token="s3cret" if "Authorization" in headers else None) as (front, url):
        head = request_head(len(body), "".join(f"{k}: {v}\r\n" for k, v in headers.items()))
        got, answer = await raw(url, [head.decode("latin-1").encode("latin-1") + body])
        assert got == status and says in json.loads(answer)["error"], answer
        assert front.engine.active == 0


async def test_an_offer_from_the_pages_own_origin_or_an_allowed_one_is_taken():
    async with front_end(capacity=2, allowed_origins=["https://app.example.org"]) as (front, url):
        offer = json.dumps({"type": "offer", "sdp": await make_offer()}).encode()
        for origin in (url, "https://app.example.org"):
            status, _, answer = await post(url + "/offer", offer, {"Origin": origin})
            assert status == 200, answer
        status, _, answer = await post(url + "/offer", offer, {"Origin": "https://other.example.org"})
        assert status == 403 and "https://other.example.org" in answer["error"]
        assert front.engine.active == 2


async def test_config_hands_turn_credentials_only_with_the_token():
    async with front_end(auth_token="s3cret", ice_servers=[STUN, TURN]) as (_, url):
        assert json.loads((await get(url + "/config"))[2])["iceServers"] == [STUN]
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/config", headers={"Authorization": "Bearer s3cret"}) as r:
                assert (await r.json())["iceServers"] == [STUN, TURN]
            async with s.get(url + "/config", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401 and "token" in (await r.json())["error"]
    async with front_end(ice_servers=[STUN, TURN]) as (_, url):  # no token: anyone may call
        assert json.loads((await get(url + "/config"))[2])["iceServers"] == [STUN, TURN]


async def test_config_mints_a_short_lived_turn_credential_per_request():
    secret, urls = "turn-s3cret", ["turn:turn.example.org:3478?transport=udp"]
    async with front_end(auth_token="s3cret", turn_secret=secret, turn_urls=urls, turn_ttl_s=900,
                         max_call_s=600) as (_, url):
        assert json.loads((await get(url + "/config"))[2])["iceServers"] == []
        minted = []
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                async with s.get(url + "/config", headers={"Authorization": "Bearer s3cret"}) as r:
                    [ice] = (await r.json())["iceServers"]
                    minted.append(ice)
    for ice in minted:
        assert ice["urls"] == urls
        expiry, _, rid = ice["username"].partition(":")
        assert abs(int(expiry) - (time.time() + 900)) < 5 and len(rid) >= 8
        digest = hmac.new(secret.encode(), ice["username"].encode(), hashlib.sha1).digest()
        assert ice["credential"] == base64.b64encode(digest).decode()  # what coturn computes
    assert minted[0]["username"] != minted[1]["username"]


async def test_bad_data_channel_messages_get_an_error_event_and_the_call_goes_on():
    bad = ["[" * 2000, b"\xff\xfe", "x" * 60_000, json.dumps({"type": "dance"}), "null", "[1]",
           json.dumps({"type": "text", "text": 7}), json.dumps({"type": "text", "text": "\ud800"}),
           "1" * 4000, json.dumps({"type": ["ping"]})]
    async with front_end() as (front, url):
        client = CallClient(url)
        await client.call()
        await client.wait_media()
        await until(lambda: client.dc.readyState == "open" and client.got.of("hello"), "the channel opens")
        for msg in bad:
            client.dc.send(msg)
        [call] = front.calls.values()
        await until(lambda: call.channel.bad.total == len(bad), "every bad message is seen")
        await until(lambda: client.got.of("error"), "the error event arrives")
        [error] = client.got.of("error")  # the first at once, the rest within the same window
        assert "nested too deeply" in error["reason"] and error["ignored"] == 1
        client.say("still here")
        await until(lambda: client.got.of("text"), "typed text is answered")
        assert client.got.of("text") == [{"type": "text", "text": "still here", "delivered": True}]
        latency = len(client.got.of("latency"))
        await asyncio.sleep(1.0)
        assert len(client.got.of("latency")) >= latency + 3 and front.calls  # media goes on
        await client.close()
