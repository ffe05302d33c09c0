"""deploy/systemd: the unit passes `systemd-analyze verify`, gives the drain time to finish
before SIGKILL, runs hardened, its environment file is a valid daemon configuration, and its
ExecStart line run by hand with that file starts a daemon that answers /readyz."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.daemon_contract import WORKER_STOP_MARGIN_S, check_daemon_env
from tests.deploy.tools import DEPLOY, REPO, run_tool
from tests.server.call_helpers import free_port, wait_ready

UNIT = DEPLOY / "systemd/duplex.service"
ENV_FILE = DEPLOY / "systemd/duplex.env"
INSTALLED_DUPLEX = "/opt/duplex/.venv/bin/duplex"
INSTALLED_ENV_FILE = "/etc/duplex/duplex.env"
ENV_LINE = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)")


def service_section() -> dict[str, str]:
    """[Service] of the unit, key -> value (the unit sets each key once)."""
    body = UNIT.read_text().split("[Service]\n", 1)[1].split("\n[", 1)[0]
    pairs = [line.split("=", 1) for line in body.splitlines()
             if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def env_value(line: str) -> tuple[str, str]:
    """KEY=VALUE as systemd's EnvironmentFile= reads it, limited to the forms we allow: a bare
    value without quotes, backslashes or blanks (systemd would rewrite those), or a value in
    single quotes, taken literally."""
    m = ENV_LINE.fullmatch(line.strip())
    assert m, f"{ENV_FILE.name}: {line!r} is not KEY=VALUE"
    key, value = m["key"], m["value"]
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return key, value[1:-1]
    assert not set(value) & set("'\"\\ \t"), (
        f"{ENV_FILE.name}: the value of {key} has quotes, a backslash or blanks, which systemd "
        f"strips or interprets; put it inside single quotes")
    return key, value


def env_file(examples: bool) -> dict[str, str]:
    """The settings the file makes; with `examples`, also its `# DUPLEX_...=` example lines."""
    env = {}
    for line in ENV_FILE.read_text().splitlines():
        example = re.fullmatch(r"#\s*(DUPLEX_\w+=.*)", line.strip())
        if example and examples:
            line = example[1]
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        key, value = env_value(line)
        env[key] = value
    return env


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify resolves ExecStart= on this machine, where /opt/duplex does not exist: the copy it
    # reads has this checkout's console script and env file in place of the installed paths,
    # and nothing else changed.
    duplex = Path(sysconfig.get_path("scripts")) / "duplex"
    assert duplex.exists(), f"{duplex} is missing: pip install -e . makes the console script"
    swaps = {f"ExecStart={INSTALLED_DUPLEX} ": f"ExecStart={duplex} ",
             f"EnvironmentFile={INSTALLED_ENV_FILE}\n": f"EnvironmentFile={ENV_FILE}\n"}
    text = UNIT.read_text()
    for installed, here in swaps.items():
        assert text.count(installed) == 1, f"{UNIT.name} should hold {installed!r} once"
        text = text.replace(installed, here)
    rendered = tmp_path / "duplex.service"
    rendered.write_text(text)
    proc = run_tool("systemd-analyze", "verify", rendered)
    # Unknown keys and bad values are warnings on stderr with exit 0: none is allowed.
    assert proc.stderr.strip() == "", proc.stderr


def test_stop_sends_sigterm_to_the_daemon_alone_and_waits_out_the_drain() -> None:
    service = service_section()
    assert service["KillMode"] == "mixed", "control-group would SIGTERM the workers mid-call"
    assert service["KillSignal"] == "SIGTERM"
    timeout_s = int(service["TimeoutStopSec"].removesuffix("s"))
    drain_s = float(env_file(examples=False)["DUPLEX_DRAIN_SECONDS"])
    assert timeout_s >= drain_s + WORKER_STOP_MARGIN_S, (
        f"TimeoutStopSec={timeout_s}s leaves less than {WORKER_STOP_MARGIN_S} s after the "
        f"{drain_s} s drain: raise it to {drain_s + WORKER_STOP_MARGIN_S:g}s")
    assert service["Restart"] == "on-failure"


@pytest.mark.parametrize("key,value", [
    ("DynamicUser", "yes"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""),
    ("RestrictSUIDSGID", "yes"), ("ProtectKernelModules", "yes"),
])
def test_unit_runs_without_privileges(key: str, value: str) -> None:
    assert service_section().get(key) == value


def test_unit_runs_the_venv_under_opt_duplex_with_the_env_file() -> None:
    service = service_section()
    assert service["ExecStart"] == f"{INSTALLED_DUPLEX} serve"
    assert service["EnvironmentFile"] == INSTALLED_ENV_FILE


@pytest.mark.parametrize("examples", [False, True], ids=["set", "set+commented-examples"])
def test_env_file_is_a_valid_daemon_configuration(examples: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_file(examples)
    assert env, f"no settings read from {ENV_FILE}"
    check_daemon_env(env, str(ENV_FILE.relative_to(DEPLOY.parent)), monkeypatch)


@pytest.mark.timeout(120)
def test_the_units_execstart_run_by_hand_with_its_env_file_answers_readyz(tmp_path: Path) -> None:
    # The env file is for a two-GPU box: on this CPU machine only what it lacks is overridden
    # (transport, devices, the preset: `tiny` loads in seconds) and the port (a free one).
    argv = shlex.split(service_section()["ExecStart"])
    assert argv[0] == INSTALLED_DUPLEX
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUPLEX_")}
    env |= env_file(examples=False) | {"DUPLEX_TRANSPORT": "gloo", "DUPLEX_PRESET": "tiny",
                                       "DUPLEX_PORT": str(port)}
    env.pop("DUPLEX_DEVICES")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(REPO / ".venv/bin/duplex"), *argv[1:]], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
