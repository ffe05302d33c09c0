"""A worker killed during a call: the call ends at once with an event that names the fault,
the daemon restarts the thinker-performer pair, and the next call is served."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.server.call_client import CallClient
from tests.server.call_helpers import Daemon, http, metric
from tests.server.pair_helpers import running

pytestmark = pytest.mark.timeout(120)


def workers(daemon: Daemon) -> list[int]:
    return [p for p in daemon.descendants() if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


async def test_a_killed_worker_ends_the_call_with_its_reason_and_the_next_call_is_served(daemon):
    client = CallClient(daemon.url)
    await client.call()
    await client.wait_media()
    first = workers(daemon)
    assert len(first) == 2
    os.kill(first[0], signal.SIGKILL)
    killed = time.monotonic()
    while not client.got.of("ended"):
        assert time.monotonic() - killed < 3, "the page was not told"
        await asyncio.sleep(0.02)
    told = time.monotonic() - killed
    reason = client.got.of("ended")[0]["reason"]
    assert "worker fault" in reason and f"pid {first[0]}" in reason and "SIGKILL" in reason, reason
    assert told < 1.5, f"the page heard of the fault {told:.2f} s after it"
    # while the pair restarts: not ready (the truth), still healthy (it will be back)
    assert http(daemon.url + "/readyz")[0] == 503 and http(daemon.url + "/healthz")[0] == 200
    assert not any(running(p) for p in first), "the faulty pair is gone, both workers"
    await client.close()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, daemon.wait_ready, 60)
    again = CallClient(daemon.url)
    await again.call()
    await again.wait_media()
    assert not set(workers(daemon)) & set(first), "a new pair serves the new call"
    await again.hangup()
    await asyncio.sleep(0.5)
    assert metric(daemon.metrics(), "duplex_sessions_total", 'outcome="error"') == 1
