"""The Grafana dashboard's queries, for the tests that check them (test_grafana.py) and for a
live test that runs each against a Prometheus that scraped a real call.
"""
from __future__ import annotations

import json
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/duplex.json"


def dashboard_exprs(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, in the dashboard's order.
    The expressions hold no Grafana variables: each runs as it is on Prometheus' query API."""
    return [(panel["title"], target["expr"])
            for panel in json.loads(path.read_text())["panels"]
            for target in panel["targets"]]
