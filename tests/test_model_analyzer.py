"""Model Analyzer's side: the repository it is given (the ensemble and its composing models,
warm-ups it cannot break), the config that points it at this project's tritonserver and
perf_analyzer on the CPU, the reading and ranking of its results table, the repository of its
pick, and the rule that keeps a configuration. The profile run itself takes minutes and its
own environment (``make model-analyzer``); its committed output is in perf/results/."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format

from wastesort.perf import model_analyzer as ma
from wastesort.perf.analyzer import ServedPoint, perf_analyzer_binary
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton import config as tc
from wastesort.triton.naming import PREPROCESS, classifier_name, ensemble_name

ENSEMBLE = ensemble_name(DEFAULT_NET)
CLASSIFIER = classifier_name(DEFAULT_NET)
# Model Analyzer 1.58's results/metrics-model-inference.csv, rows as it wrote them here
HEADER = (
    "Model,Batch,Concurrency,Model Config Path,Instance Group,Max Batch Size,Satisfies Constraints,Throughput (infer/sec),p99 Latency (ms)"
)
DEFAULT = f"{ENSEMBLE}_config_default: preprocess_config_default, {CLASSIFIER}_config_default"
ROWS = [
    f'{ENSEMBLE},1,4,"{ENSEMBLE}_config_1: preprocess_config_0, {CLASSIFIER}_config_1","1:CPU,2:CPU","1,1",Yes,187.5,30.4',
    f'{ENSEMBLE},1,8,"{ENSEMBLE}_config_1: preprocess_config_0, {CLASSIFIER}_config_1","1:CPU,2:CPU","1,1",Yes,176.1,64.6',
    f'{ENSEMBLE},1,8,"{DEFAULT}","1:CPU,1:CPU","64,64",Yes,183.3,60.9',
    f'{ENSEMBLE},1,128,"{DEFAULT}","1:CPU,1:CPU","64,64",No,191.7,705.0',
    f'{ENSEMBLE},1,2,"{ENSEMBLE}_config_0: preprocess_config_0, {CLASSIFIER}_config_0","1:CPU,1:CPU","1,1",Yes,180.3,16.7',
]


def _repository(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    tc.write_repository(repo, ShippedModel().onnx, DEFAULT_NET)
    return repo


def test_prepared_repository_is_the_ensemble_without_warmups_above_batch_1(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    assert any(w.batch_size > 1 for w in tc.parse_config(repo / CLASSIFIER / "config.pbtxt").model_warmup)
    prepared = tmp_path / "prepared"
    composing = ma.prepare_repository(repo, prepared, ENSEMBLE)
    assert composing == [PREPROCESS, CLASSIFIER]
    assert sorted(p.name for p in prepared.iterdir()) == sorted([ENSEMBLE, PREPROCESS, CLASSIFIER])
    for model in composing:
        original, copied = (tc.parse_config(r / model / "config.pbtxt") for r in (repo, prepared))
        assert [w.batch_size for w in copied.model_warmup] == [1]
        del original.model_warmup[:], copied.model_warmup[:]
        assert copied == original  # nothing else changed
    assert (prepared / CLASSIFIER / "1" / "model.onnx").read_bytes() == ShippedModel().onnx.read_bytes()


def test_config_drives_this_tritonserver_and_perf_analyzer_on_the_cpu(tmp_path: Path) -> None:
    ports = {"http": 18010, "grpc": 18011, "metrics": 18012}
    cfg = ma.analyzer_config(tmp_path / "r", ENSEMBLE, [PREPROCESS, CLASSIFIER], tmp_path, tmp_path / "in.json", ports, ma.Search())
    cfg = yaml.safe_load(yaml.safe_dump(cfg))  # what Model Analyzer reads
    assert cfg["triton_launch_mode"] == "local" and Path(cfg["triton_server_path"]).is_file()
    assert (Path(cfg["triton_server_flags"]["backend-directory"]) / "python").is_dir()
    assert all(cfg["triton_server_flags"][f"{k}-address"] == "127.0.0.1" for k in ("http", "grpc", "metrics"))
    assert cfg["triton_http_endpoint"] == "127.0.0.1:18010" and cfg["triton_metrics_url"].startswith("http://127.0.0.1:18012")
    libs = cfg["triton_server_environment"]["LD_LIBRARY_PATH"].split(":")
    assert any(p.endswith("nvidia_pytriton.libs") for p in libs)  # the server's
    assert any((Path(p) / "libcudart.so.12").exists() for p in libs)  # perf_analyzer's, same environment
    assert cfg["profile_models"] == [{ENSEMBLE: {"cpu_only": True}}]
    assert cfg["cpu_only_composing_models"] == [PREPROCESS, CLASSIFIER] and cfg["gpus"] == []
    search = ma.Search()
    assert cfg["run_config_search_mode"] == "optuna"
    assert (cfg["optuna_min_trials"], cfg["optuna_max_trials"]) == (search.min_trials, search.max_trials)
    delays = {"dynamic_batching": {"max_queue_delay_microseconds": list(search.queue_delays_us)}}
    assert cfg["ensemble_composing_models"] == [{m: {"model_config_parameters": delays}} for m in (PREPROCESS, CLASSIFIER)]
    assert 0 in search.queue_delays_us  # the hand-tuned configuration's delay is in the space
    quick_search = ma.Search(mode="quick")
    quick = ma.analyzer_config(tmp_path / "r", ENSEMBLE, [PREPROCESS, CLASSIFIER], tmp_path, tmp_path / "in.json", ports, quick_search)
    assert quick["run_config_search_mode"] == "quick" and "ensemble_composing_models" not in quick and "optuna_max_trials" not in quick
    assert cfg["constraints"] == {"perf_latency_p99": {"max": 100.0}} and cfg["objectives"] == ["perf_throughput"]
    assert cfg["perf_analyzer_flags"]["input-data"] == str(tmp_path / "in.json")
    assert cfg["perf_analyzer_path"] == str(perf_analyzer_binary())  # the project's 2.50, not Model Analyzer's own


def test_results_are_ranked_by_throughput_within_the_budget(tmp_path: Path) -> None:
    (tmp_path / ma.INFERENCE_CSV).parent.mkdir(parents=True)
    (tmp_path / ma.INFERENCE_CSV).write_text("\n".join([HEADER, *ROWS]) + "\n")
    rows = ma.read_results(tmp_path)
    assert len(rows) == len(ROWS) and rows[0].composing == ("preprocess_config_0", f"{CLASSIFIER}_config_1")
    ranked = ma.best_per_config(rows, 100.0)
    assert [(r.config.rsplit("_", 1)[-1], r.throughput) for r in ranked] == [("1", 187.5), ("default", 183.3), ("0", 180.3)]
    assert ranked[1].is_default and not ranked[0].is_default
    assert ma.describe(ranked[0]) == f"preprocess_config_0 + {CLASSIFIER}_config_1: instances 1,2, max_batch_size 1,1"
    assert ma.best_per_config(rows, 1000.0)[0].throughput == 191.7  # the 705 ms point, when allowed


@pytest.mark.skipif(ma.unavailable_reason() is not None, reason=str(ma.unavailable_reason()))
def test_model_analyzer_reads_the_config_as_meant(tmp_path: Path) -> None:
    """Model Analyzer's own parser (its environment) reads the ensemble as the profiled model and
    the queue delays as the composing models' parameters. (In the mapping form, 1.58 parses both
    into one shared object and profiles the composing models instead of the ensemble.)"""
    ports = {"http": 18010, "grpc": 18011, "metrics": 18012}
    cfg = ma.analyzer_config(tmp_path / "r", ENSEMBLE, [PREPROCESS, CLASSIFIER], tmp_path, tmp_path / "in.json", ports, ma.Search())
    (tmp_path / "r").mkdir()  # it checks that the repository exists
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    script = (
        "import json, sys\n"
        "from model_analyzer.entrypoint import get_cli_and_config_options\n"
        "sys.argv = ['model-analyzer', 'profile', '-f', sys.argv[1]]\n"
        "_, c = get_cli_and_config_options()\n"
        "print(json.dumps([[m.model_name() for m in c.profile_models], "
        "{m.model_name(): m.model_config_parameters() for m in c.ensemble_composing_models}, c.run_config_search_mode]))\n"
    )
    python = ma.binary().parent / "python"
    out = subprocess.run([str(python), "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    profiled, composing, mode = json.loads(out.stdout.strip().splitlines()[-1])
    assert profiled == [ENSEMBLE] and mode == "optuna"
    assert set(composing) == {PREPROCESS, CLASSIFIER}
    assert all(p["dynamic_batching"][0]["max_queue_delay_microseconds"] == list(ma.Search().queue_delays_us) for p in composing.values())


def test_queue_delays_are_read_from_the_configurations_model_analyzer_wrote(tmp_path: Path) -> None:
    (tmp_path / ma.INFERENCE_CSV).parent.mkdir(parents=True)
    (tmp_path / ma.INFERENCE_CSV).write_text("\n".join([HEADER, *ROWS]) + "\n")
    rows = ma.read_results(tmp_path)
    output = tmp_path / "output"
    for folder, delay in (("preprocess_config_0", 0), (f"{CLASSIFIER}_config_1", 4000)):
        cfg = tc.parse_config(_repository(tmp_path) / (PREPROCESS if folder.startswith(PREPROCESS) else CLASSIFIER) / "config.pbtxt")
        cfg.dynamic_batching.max_queue_delay_microseconds = delay
        (output / folder).mkdir(parents=True)
        (output / folder / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    with_delays = ma.with_queue_delays(rows, output)
    assert [r.queue_delays_us for r in with_delays] == [(0, 4000), (0, 4000), (), (), ()]  # config_0's classifier is not there
    assert ma.describe(with_delays[0]).endswith("max_batch_size 1,1, queue delay 0,4000 µs")


def test_pick_repository_serves_the_picks_configs(tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    ma.prepare_repository(_repository(tmp_path), prepared, ENSEMBLE)
    output = tmp_path / "output"
    for model, folder in ((ENSEMBLE, f"{ENSEMBLE}_config_1"), (PREPROCESS, "preprocess_config_0"), (CLASSIFIER, f"{CLASSIFIER}_config_1")):
        cfg = tc.parse_config(prepared / model / "config.pbtxt")
        cfg.max_batch_size = 1
        if cfg.instance_group:
            cfg.instance_group[0].count = 2
        (output / folder).mkdir(parents=True)
        (output / folder / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    (tmp_path / ma.INFERENCE_CSV).parent.mkdir(parents=True)
    (tmp_path / ma.INFERENCE_CSV).write_text("\n".join([HEADER, *ROWS]) + "\n")
    pick = ma.best_per_config(ma.read_results(tmp_path), 100.0)[0]
    target = tmp_path / "picked"
    ma.pick_repository(prepared, output, pick, ENSEMBLE, target)
    picked = tc.parse_config(target / CLASSIFIER / "config.pbtxt")
    assert picked.name == CLASSIFIER and picked.max_batch_size == 1 and picked.instance_group[0].count == 2
    assert tc.parse_config(target / ENSEMBLE / "config.pbtxt").max_batch_size == 1
    assert tc.parse_config(prepared / CLASSIFIER / "config.pbtxt").max_batch_size == 64  # the hand-tuned copy is untouched
    assert ma.batch_capacity(target, ENSEMBLE) == 1 and ma.batch_capacity(prepared, ENSEMBLE) == 64
    mixed = tmp_path / "mixed"
    ma.with_instances(prepared, target, mixed)
    mixed_classifier = tc.parse_config(mixed / CLASSIFIER / "config.pbtxt")
    assert mixed_classifier.instance_group[0].count == 2 and mixed_classifier.max_batch_size == 64
    shutil.rmtree(prepared / CLASSIFIER)
    try:
        ma.pick_repository(prepared, output, pick, ENSEMBLE, target)
    except ma.ModelAnalyzerError as exc:
        assert CLASSIFIER in str(exc)
    else:
        raise AssertionError("a pick configuring a model the repository lacks must be refused")


def _point(img_s: float) -> ServedPoint:
    return ServedPoint(4, img_s, *([0.0] * 7), 1.0, 1.0, 1.0, 30_000.0)


def test_kept_is_the_fastest_beyond_the_noise_that_accepts_the_same_requests() -> None:
    def results(hand: float, pick: tuple[float, float], instances: tuple[float, float]) -> list[ma.Compared]:
        speeds = {ma.HAND_TUNED: (hand, hand), ma.PICK: pick, ma.PICK_INSTANCES: instances}
        return [ma.Compared(label, protocol, 0, _point(v[i])) for label, v in speeds.items() for i, protocol in enumerate(("http", "grpc"))]

    same = {ma.HAND_TUNED: 64, ma.PICK: 64, ma.PICK_INSTANCES: 64}
    capped = {**same, ma.PICK: 1}
    assert ma.verdict(results(100.0, (110.0, 110.0), (104.0, 104.0)), same).startswith(ma.PICK)
    assert ma.verdict(results(100.0, (110.0, 110.0), (104.0, 104.0)), capped).startswith(ma.PICK_INSTANCES)
    assert "caps requests at 1 image" in ma.verdict(results(100.0, (110.0, 110.0), (104.0, 104.0)), capped)
    assert ma.verdict(results(100.0, (102.0, 110.0), (110.0, 101.0)), same).startswith("the hand-tuned")  # not on every protocol
    assert ma.verdict(results(100.0, (90.0, 90.0), (99.0, 99.0)), same).startswith("the hand-tuned")
    missed = [ma.Compared(ma.HAND_TUNED, "http", 0, None), ma.Compared(ma.PICK, "http", 0, _point(50.0))]
    assert ma.medians(missed) == {(ma.HAND_TUNED, "http"): 0.0, (ma.PICK, "http"): 50.0}


def _fake_analyzer(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "model-analyzer"
    script.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    script.chmod(0o755)
    return script


def test_a_search_cycling_over_measured_configurations_is_stopped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model Analyzer 1.58's quick search can revisit measured configurations forever; the run is
    interrupted after ``max_revisits`` of them in a row, not at the hour's timeout."""
    loop = f"print('[Model Analyzer] {ma.MEASURE_LINE}cfg_1: concurrency=4', flush=True)\nwhile True:\n"
    loop += f"    print('[Model Analyzer] {ma.REVISIT_LINE}. Skipping profile', flush=True)\n    time.sleep(0.001)"
    monkeypatch.setattr(ma, "binary", lambda: _fake_analyzer(tmp_path, loop))
    log = tmp_path / "ma.log"
    started = time.monotonic()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job: the interrupt must still reach the tool
    try:
        with pytest.raises(ma.ModelAnalyzerError, match="cycling: .* revisits of measured configurations"):
            ma.run(["profile"], log, {}, timeout_s=120, max_revisits=200, poll_s=0.2)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - started < 60  # interrupted, not killed a minute later
    assert ma.MEASURE_LINE in log.read_text()


@pytest.mark.slow
def test_revisits_between_new_measurements_do_not_stop_a_converging_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    steps = f"for i in range(6):\n    print('[Model Analyzer] {ma.MEASURE_LINE}cfg_%d' % i, flush=True)\n"
    steps += f"    for _ in range(150):\n        print('[Model Analyzer] {ma.REVISIT_LINE}', flush=True)\n    time.sleep(0.3)"
    monkeypatch.setattr(ma, "binary", lambda: _fake_analyzer(tmp_path, steps))
    ma.run(["profile"], tmp_path / "ma.log", {}, timeout_s=120, max_revisits=200, poll_s=0.1)  # 900 revisits in all, never 200 in a row
    monkeypatch.setattr(ma, "binary", lambda: _fake_analyzer(tmp_path, "sys.exit(3)"))
    with pytest.raises(ma.ModelAnalyzerError, match="ended with 3"):
        ma.run(["profile"], tmp_path / "ma.log", {}, timeout_s=120)
