"""Unsure answers and confidence metrics against the real tritonserver: the committed model's
threshold reaches the client from the generated config (and an edited config changes the
client's decisions), ``--save-unsure`` copies exactly the unsure photos, and the custom metrics
on the metrics port move, the unsure counter for images that look like nothing in training; the
GPU configs' answers step counts the same answers (the CPU classifier standing in for the GPU one)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.confidence import read as read_confidence
from wastesort.paths import REPO_ROOT
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton.config import GPU_CONFIG_NAME, parse_config
from wastesort.triton.naming import COUNTED_AS_PARAMETER, PREPROCESS, answers_name, classifier_name, ensemble_name
from wastesort.triton.server import MODEL_REPOSITORY, TritonServer

pytestmark = pytest.mark.server

ENSEMBLE, CLASSIFIER = ensemble_name(DEFAULT_NET), classifier_name(DEFAULT_NET)
SAMPLES = sorted((REPO_ROOT / "samples").rglob("*.jpg"))


def _repository(dest: Path, threshold: str | None = None) -> Path:
    """The committed plain ensemble's models (its GPU answers step, idle on CPU, included), with
    the ensemble's threshold replaced."""
    for name in (PREPROCESS, CLASSIFIER, ENSEMBLE, answers_name(CLASSIFIER)):
        shutil.copytree(MODEL_REPOSITORY / name, dest / name)
    if threshold is not None:
        config = dest / ENSEMBLE / "config.pbtxt"
        text = config.read_text()
        config.write_text(re.sub(rf'(key: "{THRESHOLD_PARAMETER}"\s*value \{{\s*string_value: ")[^"]*', rf"\g<1>{threshold}", text))
    return dest


def _noise(folder: Path, n: int = 6) -> list[Path]:
    """Images unlike any photo the model was trained on: coloured noise and flat colours."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (384, 512, 3), np.uint8) if i % 2 else np.full((384, 512, 3), rng.integers(0, 256, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        paths.append(folder / f"noise_{i}.jpg")
        paths[-1].write_bytes(buffer.getvalue())
    return paths


def _client(server: TritonServer, *args: str) -> tuple[list[dict], str]:
    cmd = [sys.executable, str(REPO_ROOT / "client" / "classify.py"), "--url", server.http_url.split("://")[-1], "--json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr


def _client_with_stdout_closed(server: TritonServer, *args: str) -> subprocess.CompletedProcess:
    """The client writing into a pipe whose reader has already gone, as under ``| head -1``."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    cmd = [sys.executable, str(REPO_ROOT / "client" / "classify.py"), "--url", server.http_url.split("://")[-1], "--model", ENSEMBLE, *args]
    try:
        return subprocess.run(cmd, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def committed_threshold() -> float:
    confidence = read_confidence(ShippedModel().onnx)
    if confidence is None:
        pytest.skip("the committed model is not calibrated")
    config = parse_config(MODEL_REPOSITORY / ENSEMBLE / "config.pbtxt")
    assert float(config.parameters[THRESHOLD_PARAMETER].string_value) == pytest.approx(confidence.threshold, rel=1e-5)
    return confidence.threshold


def test_unsure_answers_save_and_metrics_on_the_real_server(committed_threshold: float, tmp_path: Path) -> None:
    noise = _noise(tmp_path / "noise")
    with TritonServer(_repository(tmp_path / "repo"), log_path=tmp_path / "server.log") as server:
        before = server.metrics_text()
        rows, stderr = _client(server, "--model", ENSEMBLE, "--save-unsure", str(tmp_path / "unsure"), *map(str, SAMPLES + noise))
        after = server.metrics_text()
        gone = _client_with_stdout_closed(server, "--save-unsure", str(tmp_path / "unsure_piped"), *map(str, SAMPLES + noise))
    by_path = {Path(r["path"]).name: r for r in rows}
    assert all(by_path[p.name]["unsure"] for p in noise), "noise and flat colours must not be answered"
    for row in rows:
        assert row["unsure"] == (row["score"] < committed_threshold)  # the threshold the config carries decides
        assert row["label"] == row["top_k"][0][0]  # the top-1 stays reported either way
    unsure = sorted(Path(r["path"]).name for r in rows if r["unsure"])
    assert sorted(p.name for p in (tmp_path / "unsure").iterdir()) == unsure
    assert f"unsure about {len(unsure)} of {len(rows)} images" in stderr
    # the reader of stdout gone (``| head``): no traceback, and the unsure photos are still copied
    assert gone.returncode == 0 and "Traceback" not in gone.stderr, gone.stderr
    assert sorted(p.name for p in (tmp_path / "unsure_piped").iterdir()) == unsure
    answered = _metric(after, "wastesort_answers_total", model=CLASSIFIER) - _metric(before, "wastesort_answers_total", model=CLASSIFIER)
    unsure_count = _metric(after, "wastesort_unsure_total", model=CLASSIFIER) - _metric(before, "wastesort_unsure_total", model=CLASSIFIER)
    assert answered == len(rows) and unsure_count == len(unsure) >= len(noise)
    histogram = _metric(after, "wastesort_top_probability_count", model=CLASSIFIER)
    assert histogram >= len(rows)
    labels = {r["label"] for r in rows}
    for label in labels:
        assert _metric(after, "wastesort_answers_total", model=CLASSIFIER, label=label) > 0


def test_the_gpu_ensemble_counts_answers_in_its_answers_step(committed_threshold: float, tmp_path: Path) -> None:
    """``--model-config-name=gpu`` serves the ensemble's ``configs/gpu.pbtxt``, which ends with
    the answers step (a classifier on the onnxruntime or TensorRT backend exports no metrics).
    This server has no onnxruntime backend, so the CPU classifier stands in for the GPU one (its
    ``configs/`` removed) and the answers step counts under another name: both must count the
    same photos, and the same unsure ones."""
    repo = _repository(tmp_path / "repo")
    shutil.rmtree(repo / CLASSIFIER / "configs")
    gpu_ensemble = parse_config(repo / ENSEMBLE / "configs" / f"{GPU_CONFIG_NAME}.pbtxt")
    assert [step.model_name for step in gpu_ensemble.ensemble_scheduling.step] == [PREPROCESS, CLASSIFIER, answers_name(CLASSIFIER)]
    answers_config = repo / answers_name(CLASSIFIER) / "config.pbtxt"
    assert parse_config(answers_config).parameters[COUNTED_AS_PARAMETER].string_value == CLASSIFIER
    answers_config.write_text(answers_config.read_text().replace(f'string_value: "{CLASSIFIER}"', 'string_value: "gpu_pipeline"'))
    noise = _noise(tmp_path / "noise")
    with TritonServer(repo, log_path=tmp_path / "server.log", extra=[f"--model-config-name={GPU_CONFIG_NAME}"]) as server:
        before = server.metrics_text()
        rows, _ = _client(server, "--model", ENSEMBLE, *map(str, SAMPLES + noise))
        after = server.metrics_text()

    def moved(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    unsure = sum(r["unsure"] for r in rows)
    assert unsure >= len(noise) and all(r["unsure"] == (r["score"] < committed_threshold) for r in rows)
    for model in (CLASSIFIER, "gpu_pipeline"):  # Triton's warm-up (all-zero images) is no answer
        assert _metric(before, "wastesort_answers_total", model=model) == 0, model
    for model in (CLASSIFIER, "gpu_pipeline"):
        assert moved("wastesort_answers_total", model=model) == len(rows), model
        assert moved("wastesort_unsure_total", model=model) == unsure, model
        assert moved("wastesort_top_probability_count", model=model) == len(rows), model
    for label in {r["label"] for r in rows}:
        assert moved("wastesort_answers_total", model="gpu_pipeline", label=label) == sum(r["label"] == label for r in rows)


def test_a_threshold_changed_in_the_config_changes_the_clients_decisions(tmp_path: Path) -> None:
    with TritonServer(_repository(tmp_path / "repo", threshold="0.999"), log_path=tmp_path / "server.log") as server:
        rows, _ = _client(server, "--model", ENSEMBLE, *map(str, SAMPLES))
    assert all(r["unsure"] for r in rows if r["score"] < 0.999) and sum(r["unsure"] for r in rows) >= len(rows) - 1
    with TritonServer(_repository(tmp_path / "repo0", threshold="0"), log_path=tmp_path / "server0.log") as server:
        rows, stderr = _client(server, "--model", ENSEMBLE, "--truth-from-folder", *map(str, SAMPLES))
    assert not any(r["unsure"] for r in rows) and "coverage" not in stderr


DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "wastesort-dashboard.json"
PROMQL_WORDS = {"sum", "by", "max", "rate", "clamp_min", "histogram_quantile", "le", "model", "quantile", "label", "namespace", "pod"}


def _queried_metrics(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (label matchers and functions left out)."""
    expr = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", expr))
    expr = re.sub(r"(?<![\w:])\d+(\.\d+)?(e-?\d+)?", "", expr)  # numbers, 1e-9 included
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if w not in PROMQL_WORDS}


def test_the_dashboard_queries_metrics_the_server_exports_or_the_rules_record(tmp_path: Path) -> None:
    """Every panel of the Grafana dashboard parses and asks for a metric the real server exports
    (after it answered a few photos) or a recording rule of ``deploy/k8s``; the panels the issue
    asks for are there."""
    from wastesort.scale import manifests

    dashboard = json.loads(DASHBOARD.read_text())
    titles = [p["title"] for p in dashboard["panels"]]
    for needed in ("Images per second", "Queue time", "latency percentiles", "unsure", "by label"):
        assert any(needed.lower() in t.lower() for t in titles), needed
    records = {r["record"] for g in manifests.load(manifests.PROMETHEUS_RULE)["spec"]["groups"] for r in g["rules"] if "record" in r}
    with TritonServer(_repository(tmp_path / "repo"), log_path=tmp_path / "server.log") as server:
        _client(server, "--model", ENSEMBLE, *map(str, SAMPLES[:4]))
        exported = {line.split("{")[0].split(" ")[0] for line in server.metrics_text().splitlines() if line and not line.startswith("#")}
    queried = {name for p in dashboard["panels"] for t in p["targets"] for name in _queried_metrics(t["expr"])}
    assert queried and queried <= exported | records, sorted(queried - exported - records)
    assert "nv_inference_request_summary_us" in queried and "wastesort_unsure_total" in queried
