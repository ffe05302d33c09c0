"""Two calls at once on one thinker-performer pair (`--max-sessions 2`: two slots of one batch):
two aiortc clients, each with its own character, both get the model's units at the unit rate,
25 fps video and continuous audio (none of it lost: two callers and the daemon on 2 cores stall
an event loop now and then, and a track catches up), and each one's typed text comes back in
its own captions only. The daemon starts one pair: two worker processes, one weight copy each."""
from __future__ import annotations

import asyncio

import pytest

from model.config import UNIT_SECONDS
from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import metric

pytestmark = pytest.mark.timeout(180)
DAEMON_ARGS = ("--max-sessions", "2")
CALL_S = 5.0
CAMERA = (160, 120)  # two callers' cameras on two cores


async def test_two_calls_on_one_pair_each_get_their_units_and_their_own_captions(daemon):
    assert daemon.log_text().count("worker pair ready") == 1, "one pair: a thinker and a performer"
    assert metric(daemon.metrics(), "duplex_session_slots") == 2
    ada, bram = CallClient(daemon.url, camera=CAMERA), CallClient(daemon.url, camera=CAMERA)
    await ada.call(character="ada")
    await bram.call(character="bram")
    t0 = max(await ada.wait_media(), await bram.wait_media())
    await asyncio.sleep(1.0)
    ada.say("hello, Ada")
    bram.say("hi there Bram")
    await asyncio.sleep(CALL_S)
    got = {name: rates(c.got, t0 + 0.5, t0 + 0.5 + CALL_S) for name, c in (("ada", ada), ("bram", bram))}
    assert metric(daemon.metrics(), "duplex_sessions_active") == 2
    await asyncio.gather(ada.hangup(), bram.hangup())
    print(f"two calls on one pair: {got}")
    for name, r in got.items():
        assert r["units_delivered"] >= 0.85, (name, r)  # the model's units, not only held frames
        assert r["fps"] >= 24, (name, r)
        # continuous audio: none of the stream lost, and no arrival gap as long as a unit (a
        # track that far behind skips ahead: server/frontend/playout.py, CATCH_UP_S)
        assert r["audio_lost"] <= 0.01 and r["audio_max_gap_s"] < UNIT_SECONDS, (name, r)
    assert ada.got.of("hello")[0]["character"] == "Ada" and bram.got.of("hello")[0]["character"] == "Bram"
    captions = {name: "".join(e["text"] for e in c.got.of("caption")) for name, c in (("ada", ada), ("bram", bram))}
    assert "hello, Ada" in captions["ada"] and "hi there Bram" not in captions["ada"], captions
    assert "hi there Bram" in captions["bram"] and "hello, Ada" not in captions["bram"], captions
    await asyncio.sleep(1.0)  # both calls end on the server
    text = daemon.metrics()
    assert metric(text, "duplex_sessions_total", 'outcome="ok"') == 2
    assert metric(text, "duplex_kv_cache_tokens") == 0
