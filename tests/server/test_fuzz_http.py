"""Hostile input against a real `duplex serve` (tiny preset) while a real call runs beside it.

Seeded (DUPLEX_FUZZ_SEED, default 1234), DUPLEX_FUZZ_CASES cases a run (default 240), four
at a time on raw asyncio sockets: JSON of every shape and depth, wrong types, bodies around the
size limit, SDP mutated from a real aiortc offer (truncated, lines duplicated, dropped or
reordered, garbage bytes, huge lines, directions and ports changed), odd headers (non-ASCII,
huge, too many, a doubled Authorization, bad Content-Length, broken chunked encoding, foreign
Origin), bodies split into segments, bodies slower than the body timeout, heads that never end;
and meanwhile, on the live call's data channel, a bad message of some kind every 25 ms.

Pass: no 5xx but a deliberate 503, no "Traceback" in the daemon's log, bad-message log lines
throttled, the live call still receiving per-unit `latency` events at >= 50 % of the unit rate
over the run, and the daemon's RSS grown by less than RSS_GROWTH_MB.
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

from server.frontend.datachannel import BAD_EVERY_S
from tests.server.call_client import CallClient
from tests.server.call_helpers import Daemon, front_end
from tests.server.test_frontend_offer import make_offer
from tests.server.test_frontend_routes import raw

SEED = int(os.environ.get("DUPLEX_FUZZ_SEED", "1234"))
CASES = int(os.environ.get("DUPLEX_FUZZ_CASES", "240"))
LIMIT = 65536  # --max-offer-bytes (the default)
BODY_TIMEOUT_S = 1.0
UNIT_S = 0.16
RSS_GROWTH_MB = 80.0  # measured: ~10-30 MB (a second call's media pipeline, aiortc's caches)
# two slots: the live call holds one; an offer the fuzzer gets through takes the other and,
# never connecting, frees it after --connect-timeout-s
DAEMON_ARGS = ("--max-sessions", "2", "--connect-timeout-s", "2", "--body-timeout-s", str(BODY_TIMEOUT_S),
               "--header-timeout-s", "2")

Case = tuple[str, list[bytes], float]  # (what, TCP segments, pause between them)


def head(length: int | None, extra: str = "", path: str = "/offer", host: str = "127.0.0.1") -> bytes:
    size = "Transfer-Encoding: chunked\r\n" if length is None else f"Content-Length: {length}\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{size}"
            f"Connection: close\r\n{extra}\r\n").encode("utf-8", "surrogateescape")


def post(what: str, body: bytes, extra: str = "") -> Case:
    return what, [head(len(body), extra) + body], 0.0


def random_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 4 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 2**63, 10**300, 1e308, -0.0, rng.randint(-10**9, 10**9)])
    if pick == 3:
        return rng.choice(["", "offer", "answer", "\u0000", "\ud800", "é" * 50, "x" * rng.randrange(1, 3000)])
    if pick == 4:
        return float("nan") if rng.random() < 0.5 else float("inf")
    if pick == 5:
        return rng.choice(["ada", "bram", "../etc", "\u202e"])
    if pick in (6, 7):
        return {rng.choice(["sdp", "type", "character", "x", ""]): random_json(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def mutate_sdp(rng: random.Random, sdp: str) -> str:
    lines = sdp.split("\r\n")
    for _ in range(rng.randrange(1, 4)):
        i = rng.randrange(len(lines))
        op = rng.randrange(9)
        if op == 0:
            return "\r\n".join(lines)[: rng.randrange(len(sdp))]  # truncated
        if op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])  # a line doubled
        elif op == 2:
            del lines[i]
        elif op == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)] + "".join(
                chr(rng.choice([0, 1, 0x7f, 0xff, 0xd7ff, 0x10ffff, rng.randrange(32, 127)]))
                for _ in range(rng.randrange(1, 20)))
        elif op == 4:
            lines[i] = lines[i][:2] + "x" * rng.choice([1000, 20_000, 50_000])  # a huge line
        elif op == 5:
            rng.shuffle(lines)
        elif op == 6:
            lines = [ln.replace("sendrecv", rng.choice(["sendonly", "recvonly", "inactive", "bogus"]))
                     for ln in lines]
        elif op == 7:
            lines = [ln.replace(" 9 ", rng.choice([" 0 ", " -1 ", " 99999999 ", " x "]), 1)
                     if ln.startswith("m=") else ln for ln in lines]
        else:
            lines.insert(i, rng.choice(["m=video", "a=", "=", "a=rtpmap:", "a=ssrc:x", "c=IN IP4",
                                        "a=candidate:1 1 udp x y z", "a=fingerprint:sha-256 zz",
                                        "a=mid:" + "m" * 300, "a=group:BUNDLE " + "0 " * 500]))
    return "\r\n".join(lines)


def cases(rng: random.Random, sdp: str, n: int, port: int) -> list[Case]:
    """n hostile requests, drawn from the generators below in turn, each seeded by `rng`."""
    offer = json.dumps({"type": "offer", "sdp": sdp}).encode()

    def json_shape() -> Case:
        value = random_json(rng)
        if rng.random() < 0.5:
            value = {"type": rng.choice(["offer", 1, None]), "sdp": value, "character": random_json(rng)}
        return post("json shape", json.dumps(value, ensure_ascii=rng.random() < 0.5)
                    .encode("utf-8", "surrogatepass")[:LIMIT])

    def deep() -> Case:
        n, kind = rng.choice([100, 999, 1001, 5000, 30_000]), rng.randrange(3)
        body = [b"[" * n, b'{"a":' * n + b"1" + b"}" * n, b'{"sdp":' + b"[" * n][kind]
        return post(f"depth {n}", body[:LIMIT])

    def wrong_bytes() -> Case:
        return post("bytes", rng.choice([b"\xff\xfe" + bytes(rng.randrange(256) for _ in range(200)),
                                         b"1" * 5000, b"-" + b"9" * 60_000, b"\x00" * 100, b"",
                                         b'{"type": "offer", "sdp": "\\ud800"}', offer[: rng.randrange(len(offer))],
                                         b"\xef\xbb\xbf" + offer, offer.replace(b"offer", b"OFFER", 1)]))

    def sized() -> Case:
        size = rng.choice([LIMIT - 1, LIMIT, LIMIT + 1, 2 * LIMIT, LIMIT + 10_000])
        body = offer + b" " * max(0, size - len(offer))
        if rng.random() < 0.5:
            return post(f"{size} bytes", body)
        chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]) for i in range(0, len(body), 8192)]
        return f"{size} bytes chunked", [head(None), *chunks, b"0\r\n\r\n"], 0.0

    def mutated() -> Case:
        body = json.dumps({"type": "offer", "sdp": mutate_sdp(rng, sdp)}).encode("utf-8", "surrogatepass")
        return post("mutated sdp", body[:LIMIT + 100])

    def headers() -> Case:
        extra = rng.choice([
            "Authorization: Bearer s3cr\xc3\xa9t\r\n", "Authorization: \xff\xfe\xfd\r\n",
            "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", "Authorization: Bearer\r\n",
            "X-Big: " + "a" * 9000 + "\r\n", "".join(f"X-{i}: {i}\r\n" for i in range(100)),
            "Origin: http://evil.example\r\n", "Origin: null\r\n", "Origin: \xff\r\n",
            f"Origin: http://127.0.0.1:{port}\r\n", "Content-Encoding: gzip\r\n",
            "Expect: 100-continue\r\n", "Content-Type: text/plain\xff\r\n"])
        return post("header " + extra[:30].encode("unicode_escape").decode(), offer, extra)

    def bad_length() -> Case:
        form = rng.randrange(6)
        if form == 0:
            return "content-length abc", [head(None).replace(b"Transfer-Encoding: chunked", b"Content-Length: abc") + offer], 0.0
        if form == 1:
            return "content-length -1", [head(None).replace(b"Transfer-Encoding: chunked", b"Content-Length: -1") + offer], 0.0
        if form == 2:
            return "two content-lengths", [head(len(offer), "Content-Length: 5\r\n") + offer], 0.0
        if form == 3:
            return "chunked and content-length", [head(None, f"Content-Length: {len(offer)}\r\n") + offer], 0.0
        if form == 4:
            return "bad chunk size", [head(None) + b"zz\r\n" + offer + b"\r\n0\r\n\r\n"], 0.0
        return "length past the body", [head(len(offer) + 500) + offer], 0.0  # -> 408

    def split() -> Case:
        whole = head(len(offer)) + offer
        cuts = sorted(rng.sample(range(1, len(whole)), rng.randrange(2, 12)))
        return "split", [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])], 0.02

    def slow() -> Case:
        if rng.random() < 0.5:  # a body slower than the body timeout -> 408
            return "slow body", [head(len(offer)), *[offer[i:i + 50] for i in range(0, 400, 50)]], 0.2
        return "slow head", [b"POST /offer HTTP/1.1\r\n", b"Host: x\r\n", b"X-A: 1\r\n"] * 4, 0.25

    def other_route() -> Case:
        path = rng.choice(["/characters/%00/image.png", "/characters/..%2f..%2fetc/image.png",
                           "/static/../../etc/passwd", "/config", "/" + "a" * 9000, "/offer?x=\xff",
                           "/readyz", "/metrics"])
        method = rng.choice(["GET", "POST", "PUT", "DELETE", "\xff"])
        return f"{method} {path[:40]}", [f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                                         .encode("utf-8", "surrogateescape")], 0.0

    gens: list[Callable[[], Case]] = [json_shape, deep, wrong_bytes, sized, mutated, mutated, headers,
                                      bad_length, split, other_route, json_shape, mutated]
    out = [rng.choice(gens)() for _ in range(n - n // 40)]
    return out + [slow() for _ in range(n // 40)]  # the slow ones last: they run side by side


def bad_message(rng: random.Random) -> str | bytes:
    return rng.choice([
        lambda: "[" * rng.choice([100, 2000, 4000]), lambda: b"\xff\xfe" + rng.randbytes(30),
        lambda: "x" * 60_000, lambda: json.dumps({"type": "dance"}), lambda: "null", lambda: "[1, 2]",
        lambda: json.dumps({"type": "text", "text": 7}), lambda: json.dumps({"type": "text", "text": "\ud800"}),
        lambda: "1" * 4000, lambda: "-" + "9" * 3000, lambda: json.dumps({"type": ["ping"]}),
        lambda: json.dumps({"type": {"a": 1}}), lambda: json.dumps({"type": "text", "text": " "}),
        lambda: json.dumps(random_json(rng)), lambda: rng.randbytes(rng.randrange(1, 200)),
        lambda: "", lambda: json.dumps({"type": "text", "text": "é" * 2000}),
        lambda: '{"type": "ping", "t": ' + "9" * 4000 + "}", lambda: json.dumps({"type": "ping", "t": [[]]}),
    ])()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_hostile_requests_and_messages_get_4xx_and_the_live_call_goes_on(daemon: Daemon):
    rng = random.Random(SEED)
    sdp = await make_offer()
    todo = cases(rng, sdp, CASES, daemon.port)
    live = CallClient(daemon.url)
    await live.call()
    await live.wait_media(timeout=30)
    await asyncio.sleep(1.0)  # past the call's start-up
    rss0, t0 = rss_mb(daemon.proc.pid), time.monotonic()
    latency0 = len(live.got.of("latency"))
    got: list[tuple[str, int]] = []
    sent_bad = 0

    async def worker(queue: asyncio.Queue[Case]) -> None:
        while not queue.empty():
            what, parts, pause = queue.get_nowait()
            got.append((what, (await raw(daemon.url, parts, pause_s=pause, timeout=6.0))[0]))

    async def messages(stop: asyncio.Event) -> None:
        nonlocal sent_bad
        while not stop.is_set():
            if live.dc.readyState == "open":
                live.dc.send(bad_message(rng))
                sent_bad += 1
            await asyncio.sleep(0.025)

    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in todo:
        queue.put_nowait(case)
    stop = asyncio.Event()
    chatter = asyncio.create_task(messages(stop))
    await asyncio.gather(*(worker(queue) for _ in range(4)))
    stop.set()
    await chatter
    await asyncio.sleep(1.0)  # the last messages land
    elapsed, latency = time.monotonic() - t0, len(live.got.of("latency")) - latency0
    rss1 = rss_mb(daemon.proc.pid)
    alive = live.pc.connectionState == "connected" and not live.got.of("ended")
    await live.hangup()

    log = daemon.log_text()
    statuses: dict[int, int] = {}
    for _, status in got:
        statuses[status] = statuses.get(status, 0) + 1
    print(f"\n{len(got)} requests in {elapsed:.1f} s (seed {SEED}): statuses {dict(sorted(statuses.items()))}; "
          f"{sent_bad} bad messages; {latency} latency events of {elapsed / UNIT_S:.0f} units; "
          f"RSS {rss0:.0f} -> {rss1:.0f} MB")
    server_errors = [(what, s) for what, s in got if s >= 500 and s != 503]
    assert not server_errors, server_errors
    assert len(got) == len(todo) and statuses.get(400, 0) > len(got) // 4, statuses
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]
    assert alive and live.got.of("error"), "the live call ended or heard of no bad message"
    logged = log.count("page message(s)")
    assert 1 <= logged <= elapsed / BAD_EVERY_S + 2, f"{logged} bad-message log lines in {elapsed:.0f} s"
    assert latency >= 0.5 * elapsed / UNIT_S, f"{latency} latency events in {elapsed:.1f} s"
    assert rss1 - rss0 < RSS_GROWTH_MB, f"RSS {rss0:.0f} -> {rss1:.0f} MB"


async def test_mutated_sdp_that_passes_the_checks_is_negotiated_or_refused_with_400():
    """The daemon above has no free slot for most offers; here (the front end on a fake engine
    with room for every call) each mutated SDP that passes check_sdp reaches aiortc."""
    rng = random.Random(SEED + 1)
    sdp = await make_offer()
    async with front_end(capacity=10_000, connect_timeout_s=1.0) as (front, url):
        got: dict[int, int] = {}
        for _ in range(max(120, CASES // 2)):
            body = json.dumps({"type": "offer", "sdp": mutate_sdp(rng, sdp)}).encode("utf-8", "surrogatepass")
            status = (await raw(url, [head(len(body)) + body], timeout=6.0))[0]
            got[status] = got.get(status, 0) + 1
        print(f"\nmutated SDPs straight to aiortc: statuses {dict(sorted(got.items()))}")
        assert set(got) <= {200, 400, 413}, got
        assert got.get(200, 0) > 0
