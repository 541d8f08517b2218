"""Integration: the real tritonserver (from the nvidia-pytriton wheel) serving the committed
model repository on free loopback ports, over HTTP and gRPC, against in-process ONNX Runtime.

Tolerance: the served probabilities must match in-process ONNX Runtime on the same bytes
within 1e-4 absolute (same preprocessing code, same ONNX file; only the batch composition of
the dynamic batcher may differ), and top-1 must be identical.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as http_aio
from PIL import Image
from tritonclient.utils import InferenceServerException

from wastesort.data import read_manifest
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR, REPO_ROOT
from wastesort.preprocess import preprocess_bytes
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.synthetic import make_image
from wastesort.triton.server import TritonServer, free_port

pytestmark = pytest.mark.server

NET = DEFAULT_NET
ENSEMBLE, CLASSIFIER = f"ensemble_{NET}", f"{NET}_onnx"
ATOL = 1e-4
CLIENT = REPO_ROOT / "client" / "classify.py"
#: NVIDIA's client examples, unchanged, beside the checkout (never copied into it)
NVIDIA_EXAMPLES = REPO_ROOT.parent / "shared" / "nvidia-client-examples"
needs_nvidia_examples = pytest.mark.skipif(
    not (NVIDIA_EXAMPLES / "image_client.py").is_file(), reason=f"NVIDIA's client examples not found at {NVIDIA_EXAMPLES}"
)
SAMPLE = REPO_ROOT / "samples" / "glass" / "glass363.jpg"
PROTOCOLS = {"http": httpclient, "grpc": grpcclient}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(log_path=log) as srv:
        yield srv
    assert srv.process is not None and srv.process.returncode == 0, f"server did not stop cleanly:\n{srv.log_tail()}"


@pytest.fixture(scope="module")
def reference() -> OnnxClassifier:
    return OnnxClassifier(MODELS_DIR / f"{NET}.onnx")


def _url(server: TritonServer, protocol: str) -> str:
    return server.http_url if protocol == "http" else server.grpc_url


def _client(server: TritonServer, protocol: str):
    return PROTOCOLS[protocol].InferenceServerClient(_url(server, protocol))


def encoded_images(n: int, seed: int = 0) -> list[bytes]:
    """Synthetic photos of different sizes, formats and modes (JPEG RGB, PNG RGBA, JPEG L, PNG P)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = (int(rng.integers(120, 700)), int(rng.integers(120, 700)))
        img = make_image(LABELS[i % len(LABELS)], rng, size)
        buf = io.BytesIO()
        kind = i % 4
        if kind == 0:
            img.save(buf, "JPEG", quality=90)
        elif kind == 1:
            img.convert("RGBA").save(buf, "PNG")
        elif kind == 2:
            img.convert("L").save(buf, "JPEG")
        else:
            img.convert("P", palette=Image.Palette.ADAPTIVE).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _bytes_input(module, images: list[bytes]):
    tensor = module.InferInput("IMAGE_BYTES", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
    return tensor


def _expected(reference: OnnxClassifier, images: list[bytes]) -> np.ndarray:
    return reference.probabilities(np.stack([preprocess_bytes(b, reference.contract) for b in images]))


def test_server_and_models_are_ready(server: TritonServer) -> None:
    client = _client(server, "http")
    assert client.is_server_live() and client.is_server_ready()
    for model in ("preprocess", CLASSIFIER, ENSEMBLE):
        assert client.is_model_ready(model), model
    meta = client.get_model_metadata(ENSEMBLE)
    assert meta["inputs"] == [{"name": "IMAGE_BYTES", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, 6]}]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("n", [1, 7])
def test_ensemble_matches_in_process_onnxruntime(server: TritonServer, reference: OnnxClassifier, protocol: str, n: int) -> None:
    images = encoded_images(n, seed=n)
    module = PROTOCOLS[protocol]
    result = _client(server, protocol).infer(
        ENSEMBLE, [_bytes_input(module, images)], outputs=[module.InferRequestedOutput("PROBABILITIES")]
    )
    served = result.as_numpy("PROBABILITIES")
    expected = _expected(reference, images)
    assert served.shape == (n, 6) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=ATOL, rtol=0)
    assert (served.argmax(1) == expected.argmax(1)).all()


@pytest.mark.skipif(not ShippedModel().tta_onnx.is_file(), reason="the release did not keep a TTA model")
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_committed_tta_ensemble_matches_the_tta_export(server: TritonServer, protocol: str) -> None:
    """The TTA ensemble the committed repository serves (the client's default without make build)
    gives what models/<net>.tta.onnx gives in process, and differs from the plain model."""
    from wastesort.triton.naming import TTA, ensemble_of, variant_name

    images = encoded_images(5, seed=11)
    module = PROTOCOLS[protocol]
    out = [module.InferRequestedOutput("PROBABILITIES")]
    served = _client(server, protocol).infer(ensemble_of(variant_name(NET, TTA)), [_bytes_input(module, images)], outputs=out)
    np.testing.assert_allclose(
        served.as_numpy("PROBABILITIES"), _expected(OnnxClassifier(ShippedModel().tta_onnx), images), atol=ATOL, rtol=0
    )
    plain = _expected(OnnxClassifier(ShippedModel().onnx), images)
    assert np.abs(served.as_numpy("PROBABILITIES") - plain).max() > 1e-4


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classification_extension_returns_labelled_top_k(server: TritonServer, reference: OnnxClassifier, protocol: str) -> None:
    images = encoded_images(3, seed=5)
    module = PROTOCOLS[protocol]
    out = module.InferRequestedOutput("PROBABILITIES", class_count=3)
    rows = _client(server, protocol).infer(ENSEMBLE, [_bytes_input(module, images)], outputs=[out]).as_numpy("PROBABILITIES")
    expected = _expected(reference, images)
    assert rows.shape == (3, 3)
    for row, probs in zip(rows, expected, strict=True):
        parsed = [item.decode().split(":") for item in row]
        order = np.argsort(-probs)[:3]
        assert [int(index) for _, index, _ in parsed] == order.tolist()
        assert [label for *_, label in parsed] == [reference.labels[i] for i in order]
        np.testing.assert_allclose([float(score) for score, *_ in parsed], probs[order], atol=ATOL)


def test_classifier_takes_preprocessed_tensors_directly(server: TritonServer, reference: OnnxClassifier) -> None:
    x = np.stack([preprocess_bytes(b, reference.contract) for b in encoded_images(5, seed=9)])
    tensor = httpclient.InferInput("IMAGES", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result = _client(server, "http").infer(CLASSIFIER, [tensor])
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), reference.probabilities(x), atol=ATOL, rtol=0)
    meta = _client(server, "http").get_model_metadata(CLASSIFIER)
    assert [o["name"] for o in meta["outputs"]] == ["PROBABILITIES"] and len(meta["inputs"]) == 1


def _nvidia(script: str, *args: str) -> list[tuple[float, int, str]]:
    """Run one of NVIDIA's example clients as it is; returns its printed ``score (index) = label`` lines."""
    result = subprocess.run(
        [sys.executable, str(NVIDIA_EXAMPLES / script), *args], capture_output=True, text=True, timeout=120, cwd=NVIDIA_EXAMPLES
    )
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr
    rows = re.findall(r"^\s+([0-9.]+) \((\d+)\) = (\w+)$", result.stdout, re.MULTILINE)
    return [(float(score), int(index), label) for score, index, label in rows]


@needs_nvidia_examples
def test_nvidia_image_client_classifies_with_the_classifier_over_grpc(server: TritonServer, reference: OnnxClassifier) -> None:
    """NVIDIA's image_client.py decodes and scales the photo itself (``-s INCEPTION`` is this
    model's (x/255 - 0.5)/0.5) and needs a classifier of one input and one output."""
    assert reference.contract.mean == reference.contract.std == (0.5, 0.5, 0.5)  # what INCEPTION scaling computes
    rows = _nvidia("image_client.py", "-m", CLASSIFIER, "-c", "3", "-s", "INCEPTION", "-i", "grpc", "-u", server.grpc_url, str(SAMPLE))
    assert len(rows) == 3 and rows[0][2] == "glass" == reference.labels[rows[0][1]]
    assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)


@needs_nvidia_examples
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_nvidia_ensemble_client_classifies_the_bytes(server: TritonServer, reference: OnnxClassifier, protocol: str) -> None:
    rows = _nvidia("ensemble_image_client.py", "-m", ENSEMBLE, "-c", "3", "-i", protocol, "-u", _url(server, protocol), str(SAMPLE))
    expected = _expected(reference, [SAMPLE.read_bytes()])[0]
    assert [r[1] for r in rows] == np.argsort(-expected)[:3].tolist()
    np.testing.assert_allclose([r[0] for r in rows], np.sort(expected)[::-1][:3], atol=1e-5)  # printed with 6 decimals


def _preprocess_counts(server: TritonServer) -> tuple[int, int]:
    """(requests, executions) the preprocess model has handled so far."""
    stats = _client(server, "http").get_inference_statistics("preprocess")["model_stats"][0]
    inference = stats["inference_stats"]
    return int(inference["success"]["count"]) + int(inference["fail"]["count"]), int(stats["execution_count"])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_bytes_fail_only_their_own_request(server: TritonServer, protocol: str) -> None:
    """Concurrent requests share the dynamic batcher; the one carrying garbage gets a clear
    per-request error naming the image, the others get answers, and the server stays ready.
    The burst is repeated (at most 5 times) until Triton's statistics show that it was batched,
    i.e. the bad request really shared an ``execute`` call with good ones."""
    good = encoded_images(4, seed=11)
    bad_request = [good[0], b"this is not an image", good[1]]
    requests = [[g] for g in good] + [bad_request] + [[g] for g in good]

    async def burst() -> list[object]:
        module = grpc_aio if protocol == "grpc" else http_aio
        client = module.InferenceServerClient(_url(server, protocol))
        try:
            return await asyncio.gather(*(client.infer(ENSEMBLE, [_bytes_input(module, r)]) for r in requests), return_exceptions=True)
        finally:
            await client.close()

    for _ in range(5):
        before = _preprocess_counts(server)
        results = asyncio.run(burst())
        after = _preprocess_counts(server)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(results) == 9 and len(errors) == 1
        assert results.index(errors[0]) == 4
        message = str(errors[0])
        assert "index 1 of 3" in message and "not an image" in message
        assert all(r.as_numpy("PROBABILITIES").shape == (1, 6) for r in results if r is not errors[0])
        batched = (after[1] - before[1]) < (after[0] - before[0])  # fewer executions than requests
        if batched:
            break
    assert batched, "the dynamic batcher never combined the burst's requests"
    client = _client(server, protocol)
    assert client.is_server_ready() and client.is_model_ready(ENSEMBLE)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "zero bytes"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 50, "not an image|corrupt|decodable"),
        (b"GIF89a", "decodable|corrupt|not an image"),
    ],
    ids=["empty", "broken-jpeg-header", "gif-header-only"],
)
def test_each_kind_of_bad_bytes_gets_a_clear_error(server: TritonServer, payload: bytes, needle: str) -> None:
    import re

    with pytest.raises(InferenceServerException) as info:
        _client(server, "http").infer(ENSEMBLE, [_bytes_input(httpclient, [payload])])
    assert re.search(needle, str(info.value)), str(info.value)
    assert info.value.status() == "400"
    assert _client(server, "http").is_server_ready()


def _run_client(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLIENT), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, data in enumerate(encoded_images(10, seed=21)):
        sub = root / ("a" if i % 2 else "b" / Path("nested"))
        sub.mkdir(parents=True, exist_ok=True)
        ext = ".jpg" if data[:2] == b"\xff\xd8" else ".png"
        (sub / f"img{i}{ext}").write_bytes(data)
    return root


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_cli_classifies_a_folder(server: TritonServer, reference: OnnxClassifier, photo_dir: Path, protocol: str) -> None:
    result = _run_client(
        str(photo_dir),
        "--url",
        _url(server, protocol),
        "--protocol",
        protocol,
        "--model",  # an INT8 ensemble built here earlier would otherwise be the default
        ENSEMBLE,
        "--json",
        "--top-k",
        "2",
        "--batch-size",
        "3",
        "--concurrency",
        "2",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    paths = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    assert sorted(r["path"] for r in rows) == sorted(map(str, paths))
    expected = _expected(reference, [p.read_bytes() for p in paths])
    by_path = {r["path"]: r for r in rows}
    for path, probs in zip(paths, expected, strict=True):
        row = by_path[str(path)]
        assert row["label"] == reference.labels[int(probs.argmax())]
        assert abs(row["score"] - float(probs.max())) < ATOL
        assert len(row["top_k"]) == 2 and row["top_k"][0] == [row["label"], row["score"]]
    assert "classified 10 of 10" in result.stderr


def test_client_truth_from_folder_scores_class_folders_only(server: TritonServer, tmp_path: Path) -> None:
    """The true class is the class folder above a photo, nested or not, with the labels taken from
    the server; a photo not sorted into one yet is counted apart, and ``--top-k`` still rules
    what each line shows."""
    images = encoded_images(3, seed=5)
    for path, data in zip(("glass/a.jpg", "glass/day2/b.png", "c.jpg"), images, strict=True):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
    result = _run_client(str(tmp_path), "--url", server.http_url, "--model", ENSEMBLE, "--json", "--truth-from-folder")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["top_k"]) == 1 for r in rows)
    assert f"not scored: 1 image in {tmp_path}: no folder above them is named after a class ({', '.join(sorted(LABELS))})" in result.stderr
    assert re.search(r"top-1 [0-9.]+ \([0-2] of 2 images", result.stderr), result.stderr
    class_lines = [line.strip().split(":")[0] for line in result.stderr.splitlines() if "precision" in line]
    assert class_lines == ["glass"] and "F1" in result.stderr and "(2 images)" in result.stderr


def test_client_cli_reports_bad_files_and_keeps_going(server: TritonServer, photo_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    good = next(photo_dir.rglob("*.jpg"))
    result = _run_client(str(tmp_path), str(good), str(tmp_path / "missing.jpg"), "--url", server.http_url, "--batch-size", "8")
    assert result.returncode == 1
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    label = lines[str(good)].removeprefix("unsure (").split()[0]  # an unsure answer names its top class first
    assert label in OnnxClassifier(MODELS_DIR / f"{NET}.onnx").labels
    assert lines[str(tmp_path / "bad.jpg")].startswith("ERROR") and "not an image" in lines[str(tmp_path / "bad.jpg")]
    assert "zero bytes" in lines[str(tmp_path / "empty.png")]
    assert "no such file" in lines[str(tmp_path / "missing.jpg")]
    assert "classified 1 of 4" in result.stderr and "3 failed" in result.stderr


def test_client_cli_says_when_the_server_or_model_is_missing(server: TritonServer, photo_dir: Path) -> None:
    image = str(next(photo_dir.rglob("*.jpg")))
    for protocol in ("http", "grpc"):
        down = _run_client(image, "--url", f"127.0.0.1:{free_port()}", "--protocol", protocol)
        assert down.returncode == 3 and "cannot reach Triton" in down.stderr and "make serve" in down.stderr
    missing = _run_client(image, "--url", server.grpc_url, "--protocol", "grpc", "--model", "no_such_model")
    assert missing.returncode == 3 and "'no_such_model' is not ready" in missing.stderr and ENSEMBLE in missing.stderr
    wrong = _run_client(image, "--url", server.http_url, "--model", CLASSIFIER)
    assert wrong.returncode == 3 and "BYTES" in wrong.stderr


@pytest.mark.skipif(not DEFAULT_TRASHNET.is_dir(), reason=f"real TrashNet photos not found at {DEFAULT_TRASHNET}")
def test_real_trashnet_photos_get_the_in_process_labels(server: TritonServer) -> None:
    """The done-when check on real photos: 24 held-out test photos through the client's default
    ensemble (the one the repository marks), served labels == in-process labels of the
    classifier file that ensemble serves, and a trained model's accuracy on them."""
    from wastesort.triton.config import marked_default
    from wastesort.triton.default import choose
    from wastesort.triton.naming import PREFERRED_VARIANTS, default_ensembles, ensemble_of, installed_file, variant_name

    rows = read_manifest(MODELS_DIR / f"{NET}.manifest.csv", DEFAULT_TRASHNET)["test"][::13][:24]
    result = _run_client(*(str(r.path) for r in rows), "--url", server.grpc_url, "--protocol", "grpc", "--json")
    assert result.returncode == 0, result.stderr
    chosen = re.search(r"with (\S+) over grpc", result.stderr)
    assert chosen, result.stderr
    classifier = next(c for c in (CLASSIFIER, *(variant_name(NET, v) for v in PREFERRED_VARIANTS)) if ensemble_of(c) == chosen[1])
    on_disk = [e for e in default_ensembles(NET) if (server.repository / e / "config.pbtxt").is_file()]
    assert chosen[1] == choose(on_disk, partial(marked_default, server.repository))  # the marked one (release's, or build's)
    served_model = OnnxClassifier(installed_file(server.repository, classifier))
    served = {json.loads(line)["path"]: json.loads(line)["label"] for line in result.stdout.splitlines()}
    expected = _expected(served_model, [r.path.read_bytes() for r in rows]).argmax(1)
    assert [served[str(r.path)] for r in rows] == [served_model.labels[i] for i in expected]
    correct = sum(served[str(r.path)] == served_model.labels[r.label] for r in rows)
    assert correct >= len(rows) // 2  # a trained model, not chance (1/6); the exact figure is in MODEL_CARD.md


def test_make_serve_entry_point_stops_cleanly_on_signals(tmp_path: Path) -> None:
    """`python -m wastesort.triton.server` (what `make serve` runs) execs tritonserver in the
    foreground; SIGINT (Ctrl-C) and SIGTERM both end it with status 0."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        ports = {name: free_port() for name in ("http", "grpc", "metrics")}
        env = {
            **os.environ,
            "TRITON_HTTP_PORT": str(ports["http"]),
            "TRITON_GRPC_PORT": str(ports["grpc"]),
            "TRITON_METRICS_PORT": str(ports["metrics"]),
        }
        log = open(tmp_path / f"serve-{sig.name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "wastesort.triton.server"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            probe = TritonServer(ports=ports)
            deadline = time.monotonic() + 120
            while not probe.is_ready():
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"serve-{sig.name}.log").read_text()[-3000:]
                time.sleep(0.25)
            proc.send_signal(sig)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_a_built_variant_is_served_through_its_own_ensemble(tmp_path: Path, reference: OnnxClassifier, photo_dir: Path) -> None:
    """What `make build` installs: a variant model plus `ensemble_<variant>`, next to the base
    ones; once the INT8 ensemble is installed with the rule's mark, the client uses it unless
    told otherwise, and NVIDIA's ensemble client reads float probabilities from it."""
    from wastesort.triton.config import write_repository, write_variant
    from wastesort.triton.naming import INT8, default_ensembles, ensemble_of, variant_name
    from wastesort.variants.ort import int8_settings, optimize_fp32, quantize_int8

    repo = tmp_path / "repo"
    onnx = tmp_path / "models" / f"{NET}.onnx"  # without the TTA export beside it: no TTA ensemble
    onnx.parent.mkdir()
    onnx.write_bytes((MODELS_DIR / f"{NET}.onnx").read_bytes())
    write_repository(repo, onnx, NET)
    variant = f"{NET}_onnx_fp32"
    write_variant(repo, NET, variant, optimize_fp32(onnx, tmp_path / "fp32.onnx"), reference.contract, "onnxruntime")
    calibration = np.stack([preprocess_bytes(b, reference.contract) for b in encoded_images(8, seed=5)])
    int8 = quantize_int8(onnx, tmp_path / "int8.onnx", calibration, replace(int8_settings(NET), calibration_batch=4))
    write_variant(repo, NET, f"{NET}_onnx_int8", int8, reference.contract, "onnxruntime", default=True)  # as make build marks it
    images = encoded_images(4, seed=31)
    int8_ensemble = ensemble_of(variant_name(NET, INT8))
    with TritonServer(repo, log_path=tmp_path / "server.log") as srv:
        client = httpclient.InferenceServerClient(srv.http_url)
        assert client.is_model_ready(variant) and client.is_model_ready(f"ensemble_{variant}") and client.is_model_ready(ENSEMBLE)
        served = client.infer(f"ensemble_{variant}", [_bytes_input(httpclient, images)]).as_numpy("PROBABILITIES")
        result = _run_client(str(photo_dir), "--url", _url(srv, "http"), "--protocol", "http", "--json")
        nvidia = None
        if (NVIDIA_EXAMPLES / "ensemble_image_client.py").is_file():
            nvidia = _nvidia("ensemble_image_client.py", "-m", int8_ensemble, "-c", "3", "-i", "grpc", "-u", srv.grpc_url, str(SAMPLE))
    np.testing.assert_allclose(served, _expected(reference, images), atol=ATOL, rtol=0)
    assert result.returncode == 0, result.stderr
    assert [e for e in default_ensembles(NET) if e in (int8_ensemble, ENSEMBLE)] == [int8_ensemble, ENSEMBLE]
    assert f"with {int8_ensemble} over http" in result.stderr  # build's mark wins over the release's
    if nvidia:  # NVIDIA's ensemble client prints float probabilities, not steps of 1/255 (the softmax stays in float)
        scores = [r[0] for r in nvidia]
        assert len(scores) == 3 and any(abs(x * 255 - round(x * 255)) > 0.01 for x in scores), scores
    paths = sorted(p for p in photo_dir.rglob("*") if p.is_file())
    in_process = OnnxClassifier(int8).probabilities(np.stack([preprocess_bytes(p.read_bytes(), reference.contract) for p in paths]))
    by_path = {r["path"]: r["label"] for r in map(json.loads, result.stdout.splitlines())}
    assert [by_path[str(p)] for p in paths] == [reference.labels[k] for k in in_process.argmax(1)]
