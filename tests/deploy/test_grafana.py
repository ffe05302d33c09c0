"""deploy/grafana: the dashboard parses, every panel queries the provisioned Prometheus
datasource with valid PromQL (promtool reads each as a recording rule), and together the
panels show every metric an operator reads during a call."""
from __future__ import annotations

import json
import re
from pathlib import Path

from tests.deploy.dashboard import DASHBOARD, dashboard_exprs
from tests.deploy.tools import DEPLOY, check_promql, import_module

GRAFANA = DEPLOY / "grafana"
SHOWN = {  # every metric the dashboard must plot, by its name in the daemon
    "duplex_unit_latency_seconds", "duplex_stage_duration_seconds", "duplex_deadline_misses_total",
    "duplex_sessions_active", "duplex_sessions_total", "duplex_session_slots", "duplex_draining",
    "duplex_transfer_bytes_total", "duplex_transfer_duration_seconds", "duplex_kv_cache_tokens",
    "duplex_gpu_memory_bytes", "duplex_input_fill_total", "duplex_input_dropped_total",
    "duplex_output_underruns_total", "duplex_output_dropped_total",
    "duplex_frontend_overhead_seconds",
    "duplex_worker_restarts_total", "duplex_media_errors_total", "duplex_build_info",
}
UNIT_S = 0.16
yaml = import_module("yaml")


def panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_every_panel_queries_the_provisioned_datasource() -> None:
    datasources = GRAFANA / "provisioning/datasources/prometheus.yml"
    [source] = yaml.safe_load(datasources.read_text())["datasources"]
    for panel in panels():
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in [panel, *panel["targets"]]:
            assert target["datasource"] == {"type": "prometheus", "uid": source["uid"]}, \
                panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    check_promql({f"panel{i}": expr for i, (_, expr) in enumerate(exprs)}, tmp_path)


def test_dashboard_shows_every_metric_an_operator_reads() -> None:
    read = {re.sub(r"_(bucket|sum|count)$", "", name)
            for _, expr in dashboard_exprs() for name in re.findall(r"\bduplex_\w+", expr)}
    assert SHOWN <= read, f"no panel shows {sorted(SHOWN - read)}"


def test_stage_panels_stack_each_role_against_the_160_ms_unit() -> None:
    for role in ("thinker", "performer"):
        [panel] = [p for p in panels() if any(f'role="{role}"' in t["expr"] for t in p["targets"])
                   and "stage_duration" in p["targets"][0]["expr"]]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["custom"]["stacking"]["mode"] == "normal", panel["title"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] == "line", panel["title"]
        assert UNIT_S in [step["value"] for step in defaults["thresholds"]["steps"]], panel["title"]


def test_provisioning_loads_the_dashboard_folder_that_compose_mounts() -> None:
    providers = GRAFANA / "provisioning/dashboards/duplex.yml"
    [provider] = yaml.safe_load(providers.read_text())["providers"]
    grafana = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
