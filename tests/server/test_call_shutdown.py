"""SIGTERM or SIGINT during a live call drains `duplex serve`: /readyz says 503 within 100 ms
and new offers get 503 + Retry-After, the running call keeps its media until the drain time
is up, then the page is told "server draining", the daemon exits 0 and no process is left."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.server.call_client import CallClient, rates
from tests.server.call_helpers import Daemon
from tests.server.pair_helpers import running
from tests.server.test_frontend_offer import make_offer

pytestmark = pytest.mark.timeout(120)
DRAIN_S = 2.0


@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "SIGINT", "Ctrl-C-to-the-process-group"])
async def test_a_signal_drains_the_daemon_and_leaves_no_process(sig, group):
    daemon = Daemon(env={"DUPLEX_DRAIN_SECONDS": str(DRAIN_S)})
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, daemon.wait_ready)
        client = CallClient(daemon.url)
        await client.call()
        await client.wait_media()
        spawned = daemon.descendants()
        assert len(spawned) >= 2, "the thinker and the performer run as processes"
        async with aiohttp.ClientSession() as http:
            if group:  # Ctrl-C in a terminal: the daemon and its workers all get SIGINT
                os.killpg(daemon.proc.pid, sig)
            else:
                daemon.proc.send_signal(sig)
            sent = time.monotonic()
            while True:
                async with http.get(daemon.url + "/readyz") as r:
                    if r.status == 503:
                        break
                await asyncio.sleep(0.005)
            not_ready = time.monotonic() - sent
            body = json.dumps({"type": "offer", "sdp": await make_offer()})
            async with http.post(daemon.url + "/offer", data=body) as r:
                assert r.status == 503 and int(r.headers["Retry-After"]) > 0, await r.text()
        assert not_ready <= 0.1, f"/readyz said 503 only {not_ready * 1e3:.0f} ms after the signal"
        while not client.got.of("ended"):
            assert time.monotonic() - sent < DRAIN_S + 5, "the page was not told"
            await asyncio.sleep(0.02)
        told = time.monotonic() - sent
        assert client.got.of("draining")[0]["seconds"] == DRAIN_S
        assert client.got.of("ended")[0]["reason"].startswith("server draining"), client.got.of("ended")
        assert DRAIN_S - 0.2 <= told <= DRAIN_S + 1.5, f"the call ended {told:.2f} s after the signal"
        # video by the sender's pts, a tenth lost at most: on the loaded 2-core box arrivals over
        # 1.6 s once gave 23.994 fps, and 4 % of the audio was lost
        r = rates(client.got, sent + 0.2, sent + DRAIN_S - 0.2)
        assert r["units_delivered"] >= 0.8 and r["video_lost"] < 0.1 and r["audio_max_gap_s"] < 0.1, \
            f"the call kept its units and media while draining: {r}"
        code = await loop.run_in_executor(None, daemon.proc.wait, 30)
        await client.close()
    finally:
        daemon.stop()
    assert code == 0, daemon.log_text()
    # multiprocessing's resource tracker exits on its own once the daemon's end of its pipe closes
    deadline = time.monotonic() + 3.0
    while any(running(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in spawned if running(p)}
    assert left == {}, "processes left behind"
    assert "draining" in daemon.log_text() and "stopped" in daemon.log_text()
    assert "worker fault" not in daemon.log_text(), "a worker stopped by the signal was taken for a fault"
