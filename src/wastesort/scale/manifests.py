"""Reading the Kubernetes manifests under ``deploy/k8s`` (rendered by ``kubectl kustomize``).

The manifests are the one owner of the autoscaling signal: the recording rule (its name and
PromQL) lives in ``base/prometheusrule.yaml``; the loopback demo loads that same rule into its
Prometheus, and the tests check that the HPA, the adapter values, the probes and the ports
agree with it and with the server.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wastesort.paths import REPO_ROOT

DEPLOY_DIR = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
OVERLAYS = ("cpu", "gpu")
PROMETHEUS_RULE = K8S_DIR / "base" / "prometheusrule.yaml"
HPA = K8S_DIR / "base" / "hpa.yaml"
ADAPTER_VALUES = K8S_DIR / "prometheus-adapter" / "values.yaml"
INFERENCE_SERVICE = DEPLOY_DIR / "kserve" / "inferenceservice.yaml"


class RenderError(RuntimeError):
    """kubectl is missing or ``kubectl kustomize`` failed; the message says which."""


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render(overlay: str | Path) -> list[dict[str, Any]]:
    """The resources of ``deploy/k8s/overlays/<overlay>`` (or a kustomization folder), as
    ``kubectl kustomize`` renders them (offline)."""
    folder = Path(overlay) if Path(overlay).is_dir() else K8S_DIR / "overlays" / str(overlay)
    binary = kubectl()
    if binary is None:
        raise RenderError("kubectl is not installed (apt-get install kubectl)")
    proc = subprocess.run([binary, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {folder} failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@dataclass(frozen=True)
class RecordingRule:
    """The autoscaling signal as Prometheus records it: ``record`` (series name), ``expr``
    (PromQL) and the evaluation ``interval`` of its group."""

    record: str
    expr: str
    interval: str

    def metrics(self) -> set[str]:
        """The Triton metric names the expression reads (``nv_...``)."""
        return set(re.findall(r"\b(nv_[a-z_]+)\b", self.expr))

    def rules_file(self) -> dict[str, Any]:
        """A Prometheus rules file (``rule_files:``) holding just this rule."""
        return {
            "groups": [
                {"name": "wastesort-triton-autoscaling", "interval": self.interval, "rules": [{"record": self.record, "expr": self.expr}]}
            ]
        }


def recording_rule(path: Path = PROMETHEUS_RULE) -> RecordingRule:
    """The one recording rule of ``base/prometheusrule.yaml``."""
    group = load(path)["spec"]["groups"][0]
    (rule,) = group["rules"]
    return RecordingRule(rule["record"], rule["expr"].strip(), group.get("interval", "10s"))


@dataclass(frozen=True)
class HpaTarget:
    """What the HorizontalPodAutoscaler scales on: the Pods metric's name, its average target,
    and the replica bounds."""

    metric: str
    target: float
    min_replicas: int
    max_replicas: int


def hpa_target(path: Path = HPA) -> HpaTarget:
    spec = load(path)["spec"]
    (metric,) = [m for m in spec["metrics"] if m["type"] == "Pods"]
    return HpaTarget(
        metric["pods"]["metric"]["name"],
        float(metric["pods"]["target"]["averageValue"]),
        int(spec.get("minReplicas", 1)),
        int(spec["maxReplicas"]),
    )


def desired_replicas(current: int, average: float, target: float, bounds: tuple[int, int], tolerance: float = 0.1) -> int:
    """The HorizontalPodAutoscaler's decision for an ``AverageValue`` Pods metric (the
    Kubernetes documentation's formula): ``ceil(current * average / target)``, unchanged
    while the ratio is within ``tolerance`` of 1, clamped to ``(min, max)`` replicas."""
    ratio = average / target
    desired = current if abs(ratio - 1.0) <= tolerance else math.ceil(current * ratio)
    return int(min(max(desired, bounds[0]), bounds[1]))
