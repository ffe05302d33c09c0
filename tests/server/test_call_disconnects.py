"""100 callers that vanish without hanging up, in a row, against one daemon (2 worker pairs of
2 call slots each, so four at a time), leak nothing: no session, no KV row, no worker process; every call is counted
as dropped; the daemon stays ready, with the same worker processes, and a normal call after
them gets its 25 fps and its model units.

The ways to vanish, in turn (none says "bye"):
  tab_closed   in a call, the client's UDP sockets are closed under it: not one more packet
               (no DTLS close_notify, no RTCP, no consent answers), as a closed tab or a pulled cable
  ice_failed   the offer is posted and the answer never applied: the call never connects
  no_bye       in a call, the peer connection is closed (DTLS close_notify) without a "bye"
"""
from __future__ import annotations

import asyncio
import itertools
import re
import time

import pytest

from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric

pytestmark = pytest.mark.timeout(240)
PAIRS, SLOTS = 2, 4  # calls at once: 2 a pair
DAEMON_ARGS = ("--pairs", str(PAIRS), "--max-sessions", str(SLOTS // PAIRS), "--liveness-s", "1",
               "--connect-timeout-s", "2")
CALLS = 100
KINDS = ("tab_closed", "ice_failed", "no_bye")
# how the daemon ends each kind (its log line "call <id>: ended (<outcome>): <reason>")
REASONS = {"tab_closed": ("nothing heard from the caller",),
           "ice_failed": ("did not connect", "connection was lost"),
           "no_bye": ("connection was lost", "nothing heard from the caller")}
SMALL_CAMERA = (64, 48)  # the vanishing callers' camera: four calls at once on two cores


async def vanish(url: str, kind: str) -> tuple[str, int]:
    """One caller that vanishes in the way `kind` says; returns its session id and the 503s it
    got before a slot was free (each is counted as a rejected call)."""
    rejected = 0
    while True:
        client = CallClient(url, camera=SMALL_CAMERA)
        try:
            answer = await client.post_offer()
            break
        except RuntimeError as e:  # all slots busy: the previous callers are still being freed
            await client.close()
            assert "503" in str(e), e
            rejected += 1
            await asyncio.sleep(0.2)
    try:
        if kind == "ice_failed":
            return client.session, rejected
        await client.accept(answer)
        await client.wait_media(timeout=20)
        if kind == "tab_closed":
            client.cut_network()
        return client.session, rejected
    finally:
        await client.close()  # for tab_closed, into a mute socket: nothing leaves


async def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_100_abrupt_disconnects_leak_no_session_kv_row_or_worker(daemon):
    await wait_until(lambda: daemon.log_text().count("worker pair ready") >= PAIRS, 120,
                     f"the daemon's {PAIRS} worker pairs did not all start")
    workers = set(daemon.descendants())
    assert len(workers) >= 2 * PAIRS, f"expected a thinker and a performer per pair, found {workers}"
    kinds = itertools.cycle(KINDS)
    todo = [next(kinds) for _ in range(CALLS)]
    done: dict[str, str] = {}  # session -> kind
    rejected = 0
    started = time.monotonic()

    async def caller() -> None:
        nonlocal rejected
        while todo:
            kind = todo.pop()
            session, refused = await vanish(daemon.url, kind)
            done[session] = kind
            rejected += refused

    await asyncio.gather(*(caller() for _ in range(SLOTS)))
    took = time.monotonic() - started
    assert len(done) == CALLS, f"{len(done)} distinct sessions for {CALLS} callers"

    def settled() -> bool:
        text = daemon.metrics()
        return metric(text, "duplex_sessions_active") == 0 and sum(
            metric(text, "duplex_sessions_total", f'outcome="{o}"') for o in ("ok", "dropped", "error")) >= CALLS
    await wait_until(settled, 15, f"sessions still active 15 s after the last caller vanished:\n"
                                  f"{daemon.metrics()[-2000:]}")
    # a call's KV rows are freed once its pair has finished the units already handed over:
    # after the call is counted as ended, and within seconds
    await wait_until(lambda: metric(daemon.metrics(), "duplex_kv_cache_tokens") == 0, 15,
                     "KV rows left in use 15 s after every call ended")
    text, log = daemon.metrics(), daemon.log_text()
    assert metric(text, "duplex_sessions_active") == 0
    assert metric(text, "duplex_sessions_total", 'outcome="dropped"') == CALLS, text
    assert metric(text, "duplex_sessions_total", 'outcome="ok"') == 0
    assert metric(text, "duplex_sessions_total", 'outcome="error"') == 0, log[-3000:]
    assert metric(text, "duplex_sessions_total", 'outcome="rejected"') == rejected
    for role in ("thinker", "performer"):
        assert metric(text, "duplex_worker_restarts_total", f'role="{role}"') == 0, log[-3000:]
    assert set(daemon.descendants()) == workers, "the daemon's processes changed (a restart, or one left over)"
    assert daemon.ready(), "/readyz is not 200 after the disconnects"
    ended = dict(re.findall(r"call (\S+): ended \(dropped\): (.*)", log))
    for session, kind in done.items():
        assert session in ended, f"no end logged for the {kind} call {session}"
        assert any(r in ended[session] for r in REASONS[kind]), f"{kind} call {session} ended with: {ended[session]}"

    client = CallClient(daemon.url)  # a normal call still works after all that
    await client.call()
    t0 = await client.wait_media()
    await asyncio.sleep(3.5)
    r = rates(client.got, t0 + 0.5, t0 + 3.5)
    await client.hangup()
    assert r["units_delivered"] >= 0.85 and r["fps"] >= 22, r
    await wait_until(lambda: metric(daemon.metrics(), "duplex_sessions_total", 'outcome="ok"') == 1, 10,
                     "the normal call after the disconnects did not end ok")
    print(f"{CALLS} disconnects in {took:.1f} s ({rejected} offers refused while slots were freed)")
