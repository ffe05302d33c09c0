"""What deploy/ promises about the daemon, checked against the daemon's own code: every
DUPLEX_* variable a deploy file sets is a field of server.settings.Settings and parses there,
and every duplex_* series a rule, dashboard or autoscaler reads is in server.metrics' registry.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from server.metrics import Metrics
from server.settings import Settings

# After the drain: both workers stop and the daemon exits within this, on any machine.
WORKER_STOP_MARGIN_S = 15
SERIES = re.compile(r"\bduplex_[a-z0-9_]+\b")


def setting_names() -> set[str]:
    return {f"DUPLEX_{name.upper()}" for name in Settings.model_fields}


def check_daemon_env(env: Mapping[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`env` (the DUPLEX_* part of it) is a valid configuration of `duplex serve`."""
    ours = {k: v for k, v in env.items() if k.startswith("DUPLEX_")}
    unknown = sorted(set(ours) - setting_names())
    assert not unknown, (f"{where} sets {unknown}, which server.settings.Settings has no field "
                         f"for (it knows {sorted(setting_names())})")
    for key in [k for k in os.environ if k.startswith("DUPLEX_")]:
        monkeypatch.delenv(key)
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    Settings()  # raises, naming the field, on a value the daemon would refuse


def exported_series() -> set[str]:
    """Every series name the daemon's registry can produce (labelled ones before any sample)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    return {family.name + suffix
            for family in Metrics(preset="tiny", transport="gloo").registry.collect()
            if family.name.startswith("duplex_")
            for suffix in suffixes.get(family.type, [""])}


def series_read_by(path: Path) -> set[str]:
    return set(SERIES.findall(path.read_text()))
