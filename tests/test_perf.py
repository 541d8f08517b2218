"""perf/: perf_analyzer CSV parsing, input data, tables, plots, the timing method, the PyTorch
baseline's weights, and a very short real perf_analyzer run against the local server."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import deserialize_bytes_tensor

from wastesort import machine as mach
from wastesort.contract import PreprocessContract
from wastesort.labels import LABELS
from wastesort.perf import analyzer as pa
from wastesort.perf import inprocess as ip
from wastesort.perf import report as rep
from wastesort.perf.profile import op_type_ms
from wastesort.shipped import DEFAULT_NET, FROM_SCRATCH_NET, IMAGE_BYTES, IMAGES, ShippedModel
from wastesort.synthetic import make_image
from wastesort.timing import fixed_batch, time_interleaved
from wastesort.triton.naming import ensemble_name
from wastesort.triton.server import TritonServer

NET = DEFAULT_NET
ONNX = ShippedModel(NET).onnx
SIDE = PreprocessContract.from_onnx(str(ONNX)).height
MACHINE = {"cpu": "Test CPU", "usable_cores": 2, "cpu_flags": "avx2", "gpus": []}  # the keys the tables read
PA_UNAVAILABLE = pa.unavailable_reason()  # probes the binary once
# a perf_analyzer 2.50 ``-f`` file as written on this machine (concurrency mode)
CSV_250 = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "4,230.205,12,4322,1,167,11599,1225,1,16967,21444,23400,27200\n"
    "1,141.716,8,2514,1,75,4002,425,1,7037,7536,7886,10557\n"
)


def jpeg(seed: int = 0, size: tuple[int, int] = (320, 240)) -> bytes:
    buf = io.BytesIO()
    make_image(LABELS[seed % len(LABELS)], np.random.default_rng(seed), size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_parse_csv_reads_every_column_and_sorts_by_concurrency() -> None:
    points = pa.parse_csv(CSV_250)
    assert [p.concurrency for p in points] == [1, 4]
    first = points[0]
    assert first.infer_per_s == pytest.approx(141.716) and first.p99_us == 10557 and first.p99_ms == pytest.approx(10.557)
    assert first.breakdown_ms() == pytest.approx({"queue": 0.001, "compute_input": 0.075, "compute_infer": 4.002, "compute_output": 0.425})
    assert first.avg_us is None


def test_fresh_raw_folder_drops_an_earlier_runs_csvs_and_logs(tmp_path: Path) -> None:
    raw = tmp_path / "csv"
    raw.mkdir()
    for name in ("m_grpc_b8_c8.csv", "m_grpc_b8_c8.log", "notes.txt"):
        (raw / name).write_text("x")
    assert pa.fresh_raw_folder(raw) == raw
    assert sorted(p.name for p in raw.iterdir()) == ["notes.txt"]
    assert pa.fresh_raw_folder(tmp_path / "new").is_dir()


def test_parse_csv_takes_optional_and_extra_columns() -> None:
    header, *lines = CSV_250.strip().splitlines()
    text = "\n".join([header + ",Avg latency,GPU Utilization", *(line + ",9000,0.5" for line in lines)])
    assert all(p.avg_us == 9000 for p in pa.parse_csv(text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Concurrency,Inferences/Second\n1,2\n", "lacks columns"),
        (CSV_250.replace("141.716", "n/a"), "line 3"),
    ],
)
def test_parse_csv_rejects_malformed_files(text: str, message: str) -> None:
    with pytest.raises(pa.AnalyzerError, match=message):
        pa.parse_csv(text)


def test_best_within_budget_picks_the_fastest_point_under_the_p99_limit() -> None:
    points = pa.parse_csv(CSV_250)
    assert pa.best_within(points, 100.0).concurrency == 4
    assert pa.best_within(points, 20.0).concurrency == 1
    assert pa.best_within(points, 5.0) is None


def test_jpeg_round_trips_through_the_input_data_json() -> None:
    originals = [jpeg(1), jpeg(2, (100, 80))]
    doc = json.loads(json.dumps(pa.bytes_input_data(originals, IMAGE_BYTES)))
    assert len(doc["data"]) == 2
    for entry, original in zip(doc["data"], originals, strict=True):
        tensor = entry[IMAGE_BYTES]
        assert tensor["shape"] == [1]
        decoded = deserialize_bytes_tensor(base64.b64decode(tensor["content"]["b64"]))
        assert decoded.shape == (1,) and decoded[0] == original
        assert Image.open(io.BytesIO(decoded[0])).size == Image.open(io.BytesIO(original)).size


def test_tensor_input_data_is_little_endian_float32_per_image() -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    doc = json.loads(json.dumps(pa.tensor_input_data(x, IMAGES)))
    back = [np.frombuffer(base64.b64decode(e[IMAGES]["b64"]), "<f4").reshape(3, 8, 8) for e in doc["data"]]
    np.testing.assert_array_equal(np.stack(back), x)


def test_command_names_the_model_protocol_level_and_files(tmp_path: Path) -> None:
    settings = pa.SweepSettings(batch=8, measurement_ms=1500)
    cmd = pa.command("ensemble_x", "127.0.0.1:1", "grpc", 4, tmp_path / "o.csv", tmp_path / "in.json", settings)
    joined = " ".join(cmd)
    for part in (
        "-m ensemble_x",
        "-i grpc",
        "-b 8",
        "--concurrency-range 4",
        f"--input-data {tmp_path / 'in.json'}",
        f"-f {tmp_path / 'o.csv'}",
    ):
        assert part in joined
    with pytest.raises(ValueError, match="protocol"):
        pa.command("m", "u", "tcp", 1, tmp_path / "o.csv", tmp_path / "in.json", settings)


def test_time_interleaved_times_every_step_the_same_number_of_times() -> None:
    calls = {"a": 0, "b": 0}

    def step(name: str):
        return lambda: calls.__setitem__(name, calls[name] + 1)

    timings = time_interleaved([step("a"), step("b")], batch=4, iters=5, warmup=2, settle_s=0)
    assert calls == {"a": 7, "b": 7}
    assert [len(t.samples_ms) for t in timings] == [5, 5]
    assert all(t.median_ms > 0 and t.p90_ms <= t.p99_ms and t.img_s == pytest.approx(4000 / t.median_ms) for t in timings)
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(fixed_batch(x, 5), x[[0, 1, 2, 0, 1]])
    with pytest.raises(ValueError):
        time_interleaved([step("a")], batch=1, iters=0)


def test_pytorch_baseline_carries_the_onnx_weights() -> None:
    """The PyTorch row times the committed model's weights: logits equal ONNX Runtime's."""
    from wastesort.perf.torch_model import RebuildError, check_against_onnx, torch_from_onnx

    x = np.random.default_rng(3).standard_normal((2, 3, SIDE, SIDE)).astype(np.float32)
    model = torch_from_onnx(ONNX, NET, len(LABELS))
    assert check_against_onnx(model, ONNX, x, atol=1e-4) < 1e-4
    with pytest.raises(RebuildError):
        torch_from_onnx(ONNX, "resnet18", len(LABELS))


def test_pipeline_and_model_rows_agree_on_the_labels() -> None:
    """The in-process pipeline (bytes to label) and the ONNX Runtime row (tensor to scores)
    give the same top-1 on the same images, and top1() scores both."""
    from wastesort.contract import PreprocessContract
    from wastesort.preprocess import preprocess_bytes

    contract = PreprocessContract.from_onnx(str(ONNX))
    encoded = [jpeg(i) for i in range(6)]
    x = np.stack([preprocess_bytes(b, contract) for b in encoded])
    model, pipeline = ip.ort_candidate("ONNX Runtime", ONNX, "fp32"), ip.pipeline_candidate(ONNX, threads=2)
    labels = model.predict(x).argmax(1)
    np.testing.assert_array_equal(pipeline.predict(encoded), labels)
    assert ip.top1(model, x, encoded, labels, batch=4) == 1.0
    assert ip.top1(pipeline, x, encoded, (labels + 1) % len(LABELS), batch=4) == 0.0
    assert ip.top1(ip.preprocess_candidate(contract), x, encoded, labels, batch=4) is None
    pipeline.close()
    assert isinstance(ip.ort_candidate("ONNX Runtime", Path("/nonexistent.onnx"), "int8"), ip.Skipped)


def test_another_models_pipeline_row_carries_its_own_input_side() -> None:
    """The from-scratch model's pipeline row, timed beside the default model, says its own
    input side (so the table shows it and no speed-up is taken against another side)."""
    scratch = ShippedModel(FROM_SCRATCH_NET).onnx
    side = PreprocessContract.from_onnx(str(scratch)).height
    assert side != SIDE
    row = ip.pipeline_candidate(scratch, threads=1, model_side=SIDE)
    same = ip.pipeline_candidate(ONNX, threads=1, model_side=SIDE)
    assert (row.resolution, same.resolution) == (side, None)
    rows = [rep.InprocessRow(row.name, row.backend, "fp32", "cpu", 64, row.resolution, 1, 100.0, 110.0, 120.0, img_s=640.0)]
    assert f"| {side}px |" in rep.inprocess_table(rows, MACHINE, "PyTorch", SIDE)
    row.close()
    same.close()


def test_free_resolution_copy_runs_at_another_size(tmp_path: Path) -> None:
    from wastesort.inference import OnnxClassifier

    free = ip.free_resolution_onnx(ONNX, tmp_path / "free.onnx")
    out = OnnxClassifier(free).run(["LOGITS"], np.zeros((2, 3, 224, 224), np.float32))[0]
    assert out.shape == (2, len(LABELS))


def test_profile_sums_op_types() -> None:
    times = op_type_ms(ONNX, np.zeros((2, 3, SIDE, SIDE), np.float32), runs=2)
    assert "Conv" in times and all(v >= 0 for v in times.values())
    assert list(times.values()) == sorted(times.values(), reverse=True)


def _rows() -> list[rep.InprocessRow]:
    return [
        rep.InprocessRow("PyTorch eager", "pytorch", "fp32", "cpu", 64, None, 5, 100.0, 110.0, 120.0, 640.0, 1.0, 0.80),
        rep.InprocessRow("ONNX Runtime", "onnxruntime", "fp32", "cpu", 64, None, 5, 20.0, 21.0, 22.0, 3200.0, 5.0, 0.80),
        rep.InprocessRow("ONNX Runtime", "onnxruntime", "int8", "cpu", 64, None, 5, 16.0, 17.0, 18.0, 4000.0, 6.25, 0.79),
        rep.InprocessRow("TensorRT", "tensorrt", "fp16", "cuda", skipped="no GPU"),
        rep.InprocessRow("ONNX Runtime, 1 thread", "onnxruntime", "fp32", "cpu", 64, None, 5, 40.0, 41.0, 42.0, 1600.0, threads=1),
        rep.InprocessRow("ONNX Runtime, 1 thread", "onnxruntime", "int8", "cpu", 64, None, 5, 20.0, 21.0, 22.0, 3300.0, threads=1),
        rep.InprocessRow("OpenVINO", "openvino", "int8", "cpu", 64, None, 5, 14.0, 15.0, 16.0, 4500.0, 7.0, 0.79),
        rep.InprocessRow("preprocessing", "preprocess", "-", "cpu", 64, None, 5, 40.0, 41.0, 42.0, 1600.0, threads=2),
        rep.InprocessRow("pipeline (bytes to label)", "onnxruntime", "fp32", "cpu", 64, None, 5, 100.0, 101.0, 102.0, 640.0, 1.0, 0.80),
        rep.InprocessRow("pipeline (bytes to label)", "onnxruntime", "int8", "cpu", 64, None, 5, 80.0, 81.0, 82.0, 800.0, 1.0, 0.79),
    ]


def _sweeps() -> list[rep.ServedSweep]:
    points = pa.parse_csv(CSV_250)
    return [
        rep.ServedSweep(ensemble_name(NET), "ensemble", "grpc", 1, points),
        rep.ServedSweep(f"{NET}_onnx", "classifier", "http", 1, [], error="perf_analyzer exited with 99"),
    ]


def test_summary_holds_rows_ratios_and_targets() -> None:
    ensembles = {"fp32": ensemble_name(NET), "int8": f"{ensemble_name(NET)}_int8"}
    summary = json.loads(json.dumps(rep.summary({"cpu": "x"}, {"batch": 64}, _rows(), _sweeps(), 100.0, ensembles), default=str))
    ratios = summary["ratios"]
    assert ratios["ort_fp32_over_torch"] == pytest.approx(5.0)
    assert ratios["int8_over_fp32"] == pytest.approx(1.25)
    assert ratios["int8_over_fp32_1_thread"] == pytest.approx(3300 / 1600, abs=1e-3)
    assert ratios["best_cpu_over_torch"] == pytest.approx(4500 / 640, abs=1e-3)  # OpenVINO INT8, not a 1-thread row
    assert ratios["preprocess_img_s_per_core"] == pytest.approx(800.0)  # 1600 img/s on 2 threads
    # the INT8 ensemble did not run: the FP32 pair stands in
    assert ratios["served_over_inprocess"] == ratios["served_over_inprocess_fp32"] == pytest.approx(230.205 / 640.0, abs=1e-3)
    assert summary["targets"]["int8_over_fp32_1_thread"]["met"] is True
    assert summary["targets"]["int8_over_fp32"]["met"] is False
    assert {r["name"] for r in summary["inprocess"]} >= {"PyTorch eager", "TensorRT"}
    served = {(s["model"], s["protocol"]): s for s in summary["served"]}
    assert served[(ensemble_name(NET), "grpc")]["concurrency"] == 4
    assert served[(f"{NET}_onnx", "http")]["img_s"] is None and "99" in served[(f"{NET}_onnx", "http")]["error"]
    lines = rep.target_lines(ratios)
    assert any("int8_over_fp32 = 1.25" in line and "MISSED" in line for line in lines)
    int8_sweep = rep.ServedSweep(ensembles["int8"], "ensemble", "grpc", 1, pa.parse_csv(CSV_250))
    both = rep.ratios(_rows(), [*_sweeps(), int8_sweep], 100.0, ensembles)
    assert both["served_over_inprocess"] == pytest.approx(230.205 / 800.0, abs=1e-3)  # INT8 ensemble / INT8 pipeline


def test_the_torch_baseline_is_the_faster_eager_layout() -> None:
    rows = _rows()
    faster = rep.InprocessRow("PyTorch eager, channels-last", "pytorch", "fp32", "cpu", 64, None, 5, 80.0, 81.0, 82.0, 800.0, 1.0, 0.80)
    assert rep.torch_baseline(rows).name == "PyTorch eager"
    assert rep.torch_baseline([*rows, faster]) is faster
    assert rep.ratios([*rows, faster], _sweeps(), 100.0)["ort_fp32_over_torch"] == pytest.approx(3200 / 800)
    assert rep.torch_baseline(rows, resolution=224) is None  # no row at that side


def test_tables_show_every_row_and_the_skip_reasons() -> None:
    table = rep.inprocess_table(_rows(), MACHINE, "PyTorch eager FP32 on CPU", 160)
    assert table.count("\n| ") == 11  # header and ten rows
    assert "skipped: no GPU" in table and "| 3200 |" in table and "Test CPU, 2 cores" in table
    assert "FP32: ONNX Runtime (onnxruntime, 3200 img/s); INT8: OpenVINO (openvino, 4500 img/s)" in table
    served = rep.served_table(_sweeps(), 100.0, MACHINE)
    assert "| 230 |" in served and "perf_analyzer exited with 99" in served


def test_plots_are_written(tmp_path: Path) -> None:
    paths = [rep.plot_inprocess(_rows(), tmp_path), *rep.plot_served(_sweeps(), tmp_path, 100.0)]
    assert [p.name for p in paths] == ["inprocess_throughput.png", "served_throughput.png", "served_latency.png"]
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300
    assert rep.plot_served([], tmp_path, 100.0) == []


def test_machine_description_names_cpu_cores_and_versions() -> None:
    machine = mach.describe()
    assert machine["cpu"] and machine["usable_cores"] >= 1
    assert {"numpy", "onnxruntime", "tritonclient"} <= set(machine["versions"])
    assert mach.host_name() and "/" not in mach.host_name()


@pytest.mark.server
@pytest.mark.skipif(PA_UNAVAILABLE is not None, reason=f"perf_analyzer cannot run here: {PA_UNAVAILABLE}")
def test_short_real_perf_analyzer_run(tmp_path: Path) -> None:
    """perf_analyzer drives the real local server's ensemble with real JPEG bytes; its CSV parses
    and every request succeeded (perf_analyzer exits non-zero on a failed request)."""
    data = tmp_path / "in.json"
    data.write_text(json.dumps(pa.bytes_input_data([jpeg(i) for i in range(8)], IMAGE_BYTES)))
    settings = pa.SweepSettings(measurement_ms=500, stability_percent=100, max_trials=3)
    with TritonServer(log_path=tmp_path / "server.log") as server:
        for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
            csv_path = tmp_path / f"{protocol}.csv"
            pa.run(pa.command(ensemble_name(NET), url, protocol, 2, csv_path, data, settings), tmp_path / f"{protocol}.log")
            (point,) = pa.parse_csv(csv_path.read_text())
            assert point.concurrency == 2 and point.infer_per_s > 0 and point.p99_us >= point.p50_us > 0
            assert point.server_compute_infer_us > 0
