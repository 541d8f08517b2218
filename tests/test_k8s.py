"""The Kubernetes manifests (deploy/k8s, deploy/kserve): they render with ``kubectl kustomize``,
validate against the Kubernetes API schemas, and agree with each other and with the server
(ports, probes, restricted APIs, the autoscaling metric and its recording rule).

Custom resources have no schema offline: ServiceMonitor, PrometheusRule and InferenceService
are checked on their required fields, the PrometheusRule's rules with ``promtool``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from wastesort.paths import REPO_ROOT
from wastesort.scale import manifests as m
from wastesort.shipped import DEFAULT_NET
from wastesort.triton.naming import ensemble_name
from wastesort.triton.server import ADMIN_APIS, ADMIN_HEADER, DEFAULT_PORTS, server_command

kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (pip install -e '.[deploy]')")
needs_kubectl = pytest.mark.skipif(m.kubectl() is None, reason="kubectl is not installed (apt-get install kubectl)")
#: oldest Kubernetes without autoscaling/v2beta2 (removed in 1.26), and the newest schema here
K8S_VERSIONS = ("1.27.0", kv.latest_version())
READY_PATH = f"/v2/models/{ensemble_name(DEFAULT_NET)}/ready"


@pytest.fixture(scope="module", params=m.OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    if m.kubectl() is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl)")
    return request.param, {doc["kind"]: doc for doc in m.render(request.param)}


def container(docs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def flag(args: list[str], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) <= 1, f"--{name} given twice"
    return values[0] if values else None


@needs_kubectl
def test_overlays_render_every_resource(rendered: tuple[str, dict]) -> None:
    _, docs = rendered
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_resources_validate_against_the_api_schema(rendered: tuple[str, dict], version: str) -> None:
    _, docs = rendered
    for kind, doc in docs.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kv.validate(doc, version, strict=True)  # raises ValidationError naming the field
        assert doc["apiVersion"] != "autoscaling/v2beta2", kind


def test_validation_catches_a_broken_resource() -> None:
    hpa = m.load(m.HPA)
    hpa["spec"]["metrics"][0]["pods"]["target"]["type"] = 42
    with pytest.raises(kv.ValidationError):
        kv.validate(hpa, K8S_VERSIONS[0], strict=True)
    hpa = m.load(m.HPA)
    hpa["apiVersion"] = "autoscaling/v2beta2"
    with pytest.raises((kv.ValidationError, kv.SchemaNotFoundError)):
        kv.validate(hpa, K8S_VERSIONS[1], strict=True)


@needs_kubectl
def test_ports_probes_and_arguments_agree_with_the_server(rendered: tuple[str, dict]) -> None:
    overlay, docs = rendered
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == DEFAULT_PORTS
    for name, port in DEFAULT_PORTS.items():
        assert flag(c["args"], f"{name}-port") == str(port)
    service = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    assert {n: p["targetPort"] for n, p in service.items()} == {n: n for n in DEFAULT_PORTS}
    assert c["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "the startup probe must cover loading and warm-up"
    # the admin key: the same restriction rule the server module builds, the key from a Secret
    expected = server_command(admin_key="$(TRITON_ADMIN_KEY)")
    for name in ("http-restricted-api", "grpc-restricted-protocol"):
        assert flag(c["args"], name) == flag(expected, name)
        assert set(flag(c["args"], name).split(":")[0].split(",")) == set(ADMIN_APIS)
        assert f"{ADMIN_HEADER}=$(TRITON_ADMIN_KEY)" in flag(c["args"], name)
    (env,) = [e for e in c["env"] if e["name"] == "TRITON_ADMIN_KEY"]
    assert "secretKeyRef" in env["valueFrom"]
    assert c["command"][:3] == ["python3", "-m", "wastesort.triton.supervise"] and "exit" in c["command"]
    assert flag(c["args"], "model-repository") == "/models"
    assert flag(c["args"], "metrics-config") == flag(server_command(), "metrics-config")  # the dashboard's latency quantiles
    if overlay == "gpu":
        assert flag(c["args"], "model-config-name") == "gpu"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        gpu_configs = list((REPO_ROOT / "model_repository").glob("*/configs/gpu.pbtxt"))
        assert gpu_configs, "the gpu overlay needs configs/gpu.pbtxt in the repository"
    else:
        assert flag(c["args"], "model-config-name") is None
        assert "nvidia.com/gpu" not in json.dumps(c["resources"])


@needs_kubectl
def test_security_context_and_shutdown(rendered: tuple[str, dict]) -> None:
    _, docs = rendered
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    c = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    mounts = {v["mountPath"] for v in c["volumeMounts"]}
    assert {"/dev/shm", "/tmp"} <= mounts, "a read-only root needs writable /dev/shm (Python backend) and /tmp"
    sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    exit_timeout = int(flag(c["args"], "exit-timeout-secs"))
    assert pod["terminationGracePeriodSeconds"] > sleep + exit_timeout
    assert "memory" in c["resources"]["requests"] and "memory" in c["resources"]["limits"]


@needs_kubectl
def test_selectors_match_the_pods(rendered: tuple[str, dict]) -> None:
    _, docs = rendered
    pod_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        docs["Deployment"]["spec"]["selector"]["matchLabels"],
        docs["Service"]["spec"]["selector"],
        docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector and selector.items() <= pod_labels.items()
    monitor = docs["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= docs["Service"]["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} == {"metrics"}
    hpa = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (hpa["kind"], hpa["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])


def test_autoscaling_metric_rule_and_adapter_agree() -> None:
    rule = m.recording_rule()
    hpa = m.hpa_target()
    adapter = m.load(m.ADAPTER_VALUES)["rules"]["custom"]
    (entry,) = adapter
    assert entry["seriesQuery"].startswith(rule.record + "{")
    assert entry["name"]["as"] == hpa.metric
    assert {"namespace", "pod"} == set(entry["resources"]["overrides"])
    # the rule reads Triton's own counters (their presence on a real server: test_scale_demo)
    assert "nv_inference_queue_duration_us" in rule.expr and "nv_inference_request_success" in rule.expr
    assert 1 < hpa.min_replicas < hpa.max_replicas


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_recording_rule_passes_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump(m.recording_rule().rules_file()))
    ok = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = m.recording_rule().rules_file()
    broken["groups"][0]["rules"][0]["expr"] = "sum without (model) (rate(x[30s]) / )"
    rules.write_text(yaml.safe_dump(broken))
    assert subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True).returncode != 0


def test_hpa_target_comes_from_a_measurement() -> None:
    """The committed target lies between the measured idle and overload signal of a committed
    `make scale-demo` summary, where the HPA keeps the replicas at idle and adds some under overload."""
    summaries = [json.loads(p.read_text()) for p in (REPO_ROOT / "deploy" / "results").glob("*/summary.json")]
    measured = [s["autoscaling"] for s in summaries if "overload" in s.get("autoscaling", {})]
    assert measured, "no committed scale-demo summary with the signal under load (run make scale-demo)"
    target = m.hpa_target().target
    assert any(a["idle"]["average_us"] < target < a["overload"]["average_us"] for a in measured)
    assert any(a["recommended_target_us"] == target for a in measured), "the manifest's target is the measured recommendation"
    # KServe scales on requests in flight per replica: the measured knee
    predictor = m.load(m.INFERENCE_SERVICE)["spec"]["predictor"]
    assert any(s.get("knee_concurrency") == predictor["scaleTarget"] for s in summaries)
    assert predictor["scaleMetric"] == "concurrency"


@pytest.mark.parametrize(
    ("current", "average", "target", "expected"),
    [
        (2, 0.0, 1000.0, 2),  # idle: never below minReplicas
        (2, 1050.0, 1000.0, 2),  # within the 10% tolerance
        (2, 1500.0, 1000.0, 3),
        (2, 4000.0, 1000.0, 8),
        (4, 100000.0, 1000.0, 8),  # clamped to maxReplicas
        (6, 400.0, 1000.0, 3),
    ],
)
def test_hpa_formula(current: int, average: float, target: float, expected: int) -> None:
    assert m.desired_replicas(current, average, target, (2, 8)) == expected


def test_kserve_inference_service_required_fields() -> None:
    doc = m.load(m.INFERENCE_SERVICE)
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1" and doc["kind"] == "InferenceService"
    assert doc["metadata"]["name"]
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["storageUri"] and model["runtime"]
    assert model["readinessProbe"]["httpGet"]["path"] == READY_PATH
    deployment = m.load(m.K8S_DIR / "base" / "deployment.yaml")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert model["image"] == c["image"], "KServe runs the same server image (preprocess imports wastesort)"
    for name in ("http-restricted-api", "grpc-restricted-protocol"):
        assert flag(model["args"], name) == flag(c["args"], name)


@needs_kubectl
def test_repository_volume_component_renders(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                # kustomize takes paths relative to the kustomization's folder
                "resources": [os.path.relpath(m.K8S_DIR / "overlays" / "cpu", tmp_path)],
                "components": [os.path.relpath(m.K8S_DIR / "components" / "repository-volume", tmp_path)],
            }
        )
    )
    docs = {d["kind"]: d for d in m.render(tmp_path)}
    c = container(docs)
    assert any(v["mountPath"] == "/models" and v.get("readOnly") for v in c["volumeMounts"])
    volumes = docs["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "wastesort-models" for v in volumes)
    kv.validate(docs["Deployment"], K8S_VERSIONS[1], strict=True)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_the_drift_alarm_fires_on_a_high_unsure_share_and_not_on_a_normal_one(tmp_path: Path) -> None:
    """The confidence group of the PrometheusRule passes ``promtool check rules`` and its unit
    test (``deploy/k8s/tests/confidence_rules_test.yml``: 40% unsure for an hour fires the alert,
    10% does not), and reads the metric names the classifier exports (``test_unsure_server.py``
    sees them move on a real server)."""
    groups = m.load(m.PROMETHEUS_RULE)["spec"]["groups"]
    (confidence,) = [g for g in groups if g["name"] == "wastesort-confidence"]
    exprs = " ".join(r["expr"] for r in confidence["rules"])
    assert "wastesort_unsure_total" in exprs and "wastesort_answers_total" in exprs
    assert any(r.get("alert") == "WastesortUnsureShareHigh" for r in confidence["rules"])
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(m.K8S_DIR / "tests" / "confidence_rules_test.yml", tmp_path)
    checked = subprocess.run(["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "confidence_rules_test.yml"], cwd=tmp_path, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    broken = [{**g, "rules": [{**r, "expr": r["expr"].replace("> 0.3", "> 0.5")} for r in g["rules"]]} for g in groups]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": broken}))  # an alarm that misses 40% must fail its test
    assert subprocess.run(["promtool", "test", "rules", "confidence_rules_test.yml"], cwd=tmp_path, capture_output=True).returncode != 0
