"""A caller that vanishes without hanging up (its process killed: no goodbye, no DTLS close,
as when a tab is closed or the network drops) is noticed by its missing media and pings, and its
session is ended and freed within 3 s: aiortc alone would take ~30 s of failed consent checks."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.server.call_helpers import REPO, metric

pytestmark = pytest.mark.timeout(120)


def test_a_vanished_client_is_detected_and_its_session_freed_within_3s(daemon):
    client = subprocess.Popen([sys.executable, "-m", "tests.server.call_client", daemon.url], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = client.stdout.readline()
        assert line.startswith("in call"), line + client.stdout.read()
        time.sleep(1.5)
        assert not daemon.ready(), "the one call slot is taken"
        assert metric(daemon.metrics(), "duplex_kv_cache_tokens") > 0
    finally:
        client.kill()
        vanished = time.monotonic()
        client.wait()
    while not (daemon.ready() and metric(daemon.metrics(), "duplex_sessions_active") == 0):
        assert time.monotonic() - vanished < 10, daemon.log_text()[-3000:]
        time.sleep(0.05)
    freed = time.monotonic() - vanished
    text = daemon.metrics()
    assert freed <= 3.0, f"freed {freed:.2f} s after the client vanished"
    assert metric(text, "duplex_sessions_total", 'outcome="dropped"') == 1
    assert metric(text, "duplex_kv_cache_tokens") == 0
    assert "nothing heard from the caller" in daemon.log_text()
