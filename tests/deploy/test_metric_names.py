"""Every duplex_* series that deploy/ reads (alerts, their tests, the dashboard, the autoscaler
and its adapter rules) is one the daemon exports: names are checked against the registry of
server.metrics, so a renamed metric breaks here and not silently on a live dashboard."""
from __future__ import annotations

import pytest

from tests.deploy.daemon_contract import exported_series, series_read_by
from tests.deploy.tools import DEPLOY

READERS = ["prometheus/rules/duplex.rules.yml", "prometheus/rules/duplex.rules.test.yml",
           "grafana/dashboards/duplex.json", "k8s/base/hpa.yaml",
           "k8s/prometheus-adapter/values.yaml"]


@pytest.mark.parametrize("reader", READERS)
def test_series_read_by_deploy_files_are_exported_by_the_daemon(reader: str) -> None:
    read = series_read_by(DEPLOY / reader)
    assert read, f"{reader} reads no duplex_* series"
    unknown = read - exported_series()
    assert not unknown, f"{reader} reads {sorted(unknown)}, which server.metrics does not export"
