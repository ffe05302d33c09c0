"""A real Prometheus server (Debian's) scrapes `duplex serve` during a call and answers
histogram_quantile(0.99, ...) over duplex_unit_latency_seconds_bucket through its HTTP API;
then every expression of the shipped Grafana dashboard returns data, and the shipped alert
rules load and evaluate. The test starts its own Prometheus on a free loopback port with its
own config (the shipped rules) and data folder. Under CI=true a missing Prometheus fails it."""
from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.server.call_client import CallClient
from tests.deploy.dashboard import dashboard_exprs
from tests.server.call_helpers import ARTIFACTS, REPO, Daemon, free_port, http, need_binary

pytestmark = pytest.mark.timeout(180)
QUERY = "histogram_quantile(0.99, sum by (le) (rate(duplex_unit_latency_seconds_bucket[20s])))"
RULES = REPO / "deploy/prometheus/rules/duplex.rules.yml"
ALERTS = {"DuplexDeadlineMissesRising", "DuplexSignalToSignalP99High", "DuplexWorkerRestarts",
          "DuplexCallsRefusedAtCapacity", "DuplexNoReadyCapacity", "DuplexTargetDown"}


@pytest.fixture
def prometheus(daemon: Daemon, tmp_path: Path):
    binary = need_binary("/usr/bin/prometheus", "prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {RULES}
scrape_configs:
  - job_name: duplex
    static_configs:
      - targets: ["127.0.0.1:{daemon.port}"]
""")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if http(url + "/-/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start: {(ARTIFACTS / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(url: str, promql: str) -> list[dict]:
    status, _, body = http(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}")
    answer = json.loads(body)
    assert status == 200 and answer["status"] == "success", answer
    return answer["data"]["result"]


async def until_scraped(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not query(url, 'up{job="duplex"} == 1'):
        assert time.monotonic() < deadline, "prometheus never scraped the daemon"
        await asyncio.sleep(0.2)


async def test_prometheus_scrapes_the_daemon_and_answers_the_p99_unit_latency(daemon, prometheus):
    await until_scraped(prometheus)  # the first scrape comes a moment after Prometheus starts
    client = CallClient(daemon.url)
    await client.call()
    await client.wait_media()
    deadline, p99 = time.monotonic() + 20, None
    while time.monotonic() < deadline:  # scrapes every second during the call
        await asyncio.sleep(1.0)
        result = query(prometheus, QUERY)
        if result and result[0]["value"][1] not in ("NaN", "+Inf"):
            p99 = float(result[0]["value"][1])
            break
    await client.hangup()
    assert p99 is not None, (f"no quantile from Prometheus: {query(prometheus, QUERY)}; "
                             f"targets: {http(prometheus + '/api/v1/targets')[2][:2000]!r}; "
                             f"count: {query(prometheus, 'duplex_unit_latency_seconds_count')}")
    assert 0 < p99 <= 2.0, p99
    up = query(prometheus, 'up{job="duplex"}')
    assert up and up[0]["value"][1] == "1"
    info = query(prometheus, "duplex_build_info")
    assert info[0]["metric"]["preset"] == "tiny" and info[0]["metric"]["transport"] == "gloo"
    stages = query(prometheus, 'sum by (role, stage) (duplex_stage_duration_seconds_count)')
    assert {(s["metric"]["role"], s["metric"]["stage"]) for s in stages} >= {("thinker", "encode"), ("performer", "solve")}

    # the shipped dashboard: every panel's expression has data after a real call (GPU memory
    # has none on a CPU daemon: it is exported only where GPUs are used)
    await asyncio.sleep(2.0)  # scrapes after the hang-up: the outcome counter moved
    empty = [(title, expr) for title, expr in dashboard_exprs()
             if "gpu_memory" not in expr and not query(prometheus, expr)]
    assert empty == [], f"dashboard expressions without data: {empty}"
    # the shipped alert rules are loaded, evaluate without error, and none fires on a healthy call
    status, _, body = http(prometheus + "/api/v1/rules")
    rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} >= ALERTS
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    firing = [a["labels"]["alertname"] for a in json.loads(http(prometheus + "/api/v1/alerts")[2])["data"]["alerts"]]
    assert "DuplexTargetDown" not in firing and "DuplexWorkerRestarts" not in firing, firing
