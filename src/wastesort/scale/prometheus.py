"""Prometheus (Debian's ``prometheus``) scraping tritonserver replicas on loopback, with the
recording rule of the Kubernetes manifests (:func:`wastesort.scale.manifests.recording_rule`).

Each replica is a scrape target labelled ``pod=<replica name>``, as the Prometheus Operator
labels pods, so the rule's per-pod series looks as it does in a cluster.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from wastesort.scale.manifests import RecordingRule
from wastesort.triton.server import DEFAULT_ADDRESS, free_port, stop_child
from wastesort.triton.supervise import http_ready

JOB = "wastesort-triton"


def config(targets: dict[str, int], rules_file: Path, scrape_interval: str = "2s") -> dict:
    """prometheus.yml: every ``pod name -> metrics port`` scraped on 127.0.0.1."""
    return {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(rules_file)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [{"targets": [f"{DEFAULT_ADDRESS}:{port}"], "labels": {"pod": pod}} for pod, port in targets.items()],
            }
        ],
    }


@dataclass
class Prometheus:
    """``prometheus`` as our child on a free loopback port, its data in ``workdir``."""

    targets: dict[str, int]
    rule: RecordingRule
    workdir: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{DEFAULT_ADDRESS}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed (apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        rules = self.workdir / "rules.yml"
        rules.write_text(yaml.safe_dump(self.rule.rules_file(), sort_keys=False))
        promtool = shutil.which("promtool")
        if promtool:
            checked = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
            if checked.returncode != 0:
                raise RuntimeError(f"promtool rejected the recording rule: {checked.stdout}{checked.stderr}")
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config(self.targets, rules), sort_keys=False))
        cmd = [
            binary,
            f"--config.file={cfg}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={DEFAULT_ADDRESS}:{self.port}",
            "--storage.tsdb.retention.time=2h",
        ]
        with open(self.workdir / "prometheus.log", "wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not start: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.25)
        return self

    def ready(self) -> bool:
        return http_ready(f"{self.url}/-/ready")

    def query(self, expr: str) -> dict[str, float]:
        """An instant query: ``pod`` label (or the whole label set) -> value."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r}: {body}")
        return {r["metric"].get("pod", json.dumps(r["metric"], sort_keys=True)): float(r["value"][1]) for r in body["data"]["result"]}

    def recorded(self) -> dict[str, float]:
        """The recording rule's latest value per pod."""
        return self.query(self.rule.record)

    def wait_evaluated(self, timeout_s: float) -> None:
        """Until the recording rule has a value for every target."""
        deadline = time.monotonic() + timeout_s
        while set(self.recorded()) != set(self.targets):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the recording rule {self.rule.record} has no value for every replica after {timeout_s:.0f} s: {self.recorded()}"
                )
            time.sleep(1)

    def stop(self) -> None:
        stop_child(self.process, signal.SIGTERM, 15)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
