"""deploy/prometheus: promtool accepts the scrape config and the rules, and the rules' unit
tests pass, with every alert shown firing and not firing. Each alert tells the operator what
to do (a `runbook` annotation, and its line in deploy/README.md)."""
from __future__ import annotations

import pytest

from tests.deploy.tools import DEPLOY, import_module, run_tool

PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules/duplex.rules.yml"
RULE_TESTS = PROMETHEUS / "rules/duplex.rules.test.yml"
ALERTS = {"DuplexTargetDown", "DuplexDeadlineMissesRising", "DuplexSignalToSignalP99High",
          "DuplexWorkerRestarts", "DuplexCallsRefusedAtCapacity", "DuplexNoReadyCapacity"}
yaml = import_module("yaml")


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_promtool_accepts_the_scrape_config_and_its_rule_files() -> None:
    out = run_tool("promtool", "check", "config", PROMETHEUS / "prometheus.yml").stdout
    assert "1 rule files found" in out, out


def test_promtool_accepts_the_rules() -> None:
    out = run_tool("promtool", "check", "rules", RULES).stdout
    assert f"{len(alert_rules())} rules found" in out, out


def test_rule_unit_tests_pass() -> None:
    run_tool("promtool", "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)


def test_the_alerts_an_operator_needs_are_all_there() -> None:
    assert {rule["alert"] for rule in alert_rules()} == ALERTS


def test_unit_tests_show_every_alert_firing_and_not_firing() -> None:
    shown: dict[str, set[bool]] = {name: set() for name in ALERTS}
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            shown[check["alertname"]].add(bool(check["exp_alerts"]))
    missing = {name: {True, False} - seen for name, seen in shown.items() if seen != {True, False}}
    assert not missing, f"alerts not shown firing (True) / not firing (False): {missing}"


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_says_what_is_wrong_and_what_to_do(rule: dict) -> None:
    assert rule["labels"]["severity"] in ("page", "ticket")
    assert rule["annotations"]["summary"] and rule["annotations"]["runbook"]
    readme = (DEPLOY / "README.md").read_text()
    assert f"`{rule['alert']}`" in readme, f"deploy/README.md has no runbook for {rule['alert']}"
