"""Robustness against the real tritonserver (nvidia-pytriton's Triton 2.51) under this project's
supervisor: the bad-input matrix over HTTP and gRPC, the restricted administrative APIs, a
Python-backend instance killed, the server killed and frozen during a client run.

The repository is generated with small limits (1 MP, 2 MB per image) so that the limit probes
are cheap and show that the limits are the configured ones, not PIL's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from wastesort.paths import MODELS_DIR, REPO_ROOT
from wastesort.reliability import faults
from wastesort.reliability import images as im
from wastesort.reliability.probes import JPEG_RECODE_ATOL, Target, matrix, run_matrix
from wastesort.reliability.soak import soak
from wastesort.shipped import DEFAULT_NET
from wastesort.triton.config import ServingOptions, write_repository
from wastesort.triton.server import ADMIN_HEADER, GRPC_ADMIN_HEADER, TritonServer
from wastesort.triton.supervise import is_dead

pytestmark = pytest.mark.server

NET = DEFAULT_NET
LIMITS = ServingOptions(max_pixels=1_000_000, max_image_bytes=2_000_000)
ADMIN_KEY = "test-admin-key-0123"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("limited") / "model_repository"
    write_repository(repo, MODELS_DIR / f"{NET}.onnx", NET, LIMITS)
    return repo


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    with TritonServer(repository, log_path=log, supervise=True, admin_key=ADMIN_KEY) as srv:
        yield srv


@pytest.fixture()
def fresh_server(repository: Path, tmp_path: Path) -> Iterator[TritonServer]:
    """A server of its own, for tests that kill parts of it."""
    with TritonServer(repository, log_path=tmp_path / "tritonserver.log", supervise=True) as srv:
        faults.wait_for_log(srv, "watching Python-backend instance preprocess_0_0")
        yield srv


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(96):
        path = root / f"photo{i:03d}.jpg"
        path.write_bytes(im.encode(im.photo(("glass", "metal", "paper")[i % 3], (320, 240), seed=i), "JPEG", quality=85))
        paths.append(path)
    return paths


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_input_matrix(server: TritonServer, protocol: str) -> None:
    """Every probe: the expected answer or a clear invalid-argument error, and the server and
    every model still ready afterwards."""
    url = server.http_url if protocol == "http" else server.grpc_url
    target = Target.from_server(server.http_url, NET)
    assert (target.max_pixels, target.max_image_bytes) == (LIMITS.max_pixels, LIMITS.max_image_bytes)
    outcomes = run_matrix(url, protocol, target)
    assert len(outcomes) == len(matrix())
    failures = [f"{o.probe.name}: {o.why} [{o.status}] {o.message[:200]}" for o in outcomes if not o.passed]
    assert not failures, "\n".join(failures)


def test_orientation_probe_can_fail(server: TritonServer) -> None:
    """The control for the EXIF probes: the same stored pixels without the tag are classified
    differently, so a server that ignored the tag would fail the matrix. A real photo (a
    committed sample): the model's probabilities for a synthetic one are flattened as atypical,
    and would hardly move with the rotation."""
    upright = Image.open(REPO_ROOT / "samples" / "plastic" / "plastic196.jpg").convert("RGB")  # its answer turns with it
    client = httpclient.InferenceServerClient(server.http_url)

    def probabilities(data: bytes) -> np.ndarray:
        tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        return client.infer(f"ensemble_{NET}", [tensor]).as_numpy("PROBABILITIES")

    reference = probabilities(im.encode(upright, "PNG"))
    for orientation in (3, 6, 8):
        assert np.abs(probabilities(im.with_orientation(upright, orientation, "PNG")) - reference).max() < 1e-5
        assert np.abs(probabilities(im.without_orientation(upright, orientation, "PNG")) - reference).max() > 1e-3
    # the JPEG probe's tolerance is far below what ignoring the tag costs on the same photo
    jpeg_reference = probabilities(im.encode(upright, "JPEG", quality=95))
    assert np.abs(probabilities(im.with_orientation(upright, 6, "JPEG")) - jpeg_reference).max() < JPEG_RECODE_ATOL
    assert np.abs(probabilities(im.without_orientation(upright, 6, "JPEG")) - jpeg_reference).max() > 2 * JPEG_RECODE_ATOL


def test_admin_apis_need_the_key_and_inference_does_not(server: TritonServer) -> None:
    key = {ADMIN_HEADER: ADMIN_KEY}
    wrong = {ADMIN_HEADER: "guess"}
    grpc_key = {GRPC_ADMIN_HEADER: ADMIN_KEY}
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    for call in (
        lambda h: http.get_model_repository_index(headers=h),
        lambda h: http.get_log_settings(headers=h),
        lambda h: http.get_trace_settings(headers=h),
        lambda h: http.get_system_shared_memory_status(headers=h),
        lambda h: grpc.get_model_repository_index(headers=h),
        lambda h: grpc.get_log_settings(headers=h),
        lambda h: grpc.unload_model(f"ensemble_{NET}", headers=h),
    ):
        for headers in (None, wrong, {GRPC_ADMIN_HEADER: "guess"}):
            with pytest.raises(InferenceServerException, match="restricted|admin-key|PERMISSION|403"):
                call(headers)
    assert http.get_model_repository_index(headers=key) and grpc.get_log_settings(headers=grpc_key)
    with pytest.raises(InferenceServerException, match="explicit model load / unload is not allowed"):
        http.unload_model(f"ensemble_{NET}", headers=key)  # model control mode none, even with the key
    assert http.is_server_ready() and http.is_model_ready(f"ensemble_{NET}")
    tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[im.encode(im.photo(), "JPEG")]], dtype=np.object_))
    assert http.infer(f"ensemble_{NET}", [tensor]).as_numpy("PROBABILITIES").shape == (1, 6)


def test_soak_half_a_minute(server: TritonServer, photos: list[Path]) -> None:
    """The CI version of `make reliability`'s soak: half a minute at the knee (8 images per
    request, 2 in flight) with zero failed requests and no memory growth after warm-up."""
    result = soak(
        server.http_url,
        "http",
        f"ensemble_{NET}",
        [p.read_bytes() for p in photos],
        batch=8,
        concurrency=2,
        duration_s=30,
        server_pids=lambda: faults.server_processes(server),
        sample_s=1,
        progress=False,
    )
    assert result.errors == 0, result.error_samples
    assert result.requests > 0 and result.images == 8 * result.requests
    assert result.memory_holds, result.summary()["memory_samples"]


def test_dead_instance_is_noticed_logged_counted_and_recovered(fresh_server: TritonServer) -> None:
    """Triton 2.51 keeps a model READY when its stub dies; the supervisor notices, says so in
    the log, takes the server down (not ready) and back up, and the metrics keep the count."""
    stub = faults.stubs(fresh_server)["preprocess_0_0"]
    mark = len(faults.log_text(fresh_server))
    faults.kill(stub.pid)
    recovery = faults.watch_readiness(fresh_server)
    assert recovery.first_not_ready_s is not None and recovery.ready_again_s is not None, faults.log_text(fresh_server)[-3000:]
    log = faults.log_text(fresh_server)[mark:]
    assert f"Python-backend instance preprocess_0_0 of model 'preprocess' (stub pid {stub.pid}) died" in log
    assert "restarting tritonserver" in log
    assert faults.metric_values(fresh_server, "wastesort_instance_deaths") == {'{model="preprocess"}': 1.0}
    client = httpclient.InferenceServerClient(fresh_server.http_url)
    tensor = httpclient.InferInput("IMAGE_BYTES", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[im.encode(im.photo(), "JPEG")]], dtype=np.object_))
    assert client.infer(f"ensemble_{NET}", [tensor]).as_numpy("PROBABILITIES").shape == (1, 6)
    assert faults.stubs(fresh_server)["preprocess_0_0"].pid != stub.pid


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_client_rides_out_a_server_kill(fresh_server: TritonServer, photos: list[Path], protocol: str) -> None:
    """kill -9 of tritonserver mid-run: the supervisor restarts it, the client retries with
    backoff, and every photo is classified exactly once."""
    url = fresh_server.http_url if protocol == "http" else fresh_server.grpc_url
    pid = faults.triton_pid(fresh_server)
    old_stubs = faults.stubs(fresh_server).values()
    run = faults.run_client_with_fault(
        url, protocol, photos, lambda: faults.kill(pid), after_results=16, client_args=["--batch-size", "4", "--concurrency", "2"]
    )
    assert run.fault_at_result == 16 and faults.triton_pid(fresh_server) != pid
    assert faults.supervisor_restart_reason(fresh_server) == "tritonserver was killed by signal 9"
    assert all(is_dead(stub.pid) for stub in old_stubs)  # the killed server's stubs do not live on as orphans
    assert run.accounted_for(), run.stderr
    assert run.returncode == 0 and run.classified == len(photos), [r["error"] for r in run.failed][:5]
    assert "requests retried" in run.stderr


def test_client_lists_every_photo_when_the_server_stays_down(fresh_server: TritonServer, photos: list[Path]) -> None:
    """tritonserver killed with its supervisor paused, so nothing restarts it: the client gives
    up after its retries and lists every photo it could not classify; none is dropped."""
    with faults.server_gone_for_good(fresh_server) as gone_for_good:
        run = faults.run_client_with_fault(
            fresh_server.http_url,
            "http",
            photos * 4,
            gone_for_good,
            after_results=8,
            client_args=["--batch-size", "4", "--concurrency", "2", "--retries", "2", "--backoff", "0.2"],
        )
    assert run.accounted_for() and run.returncode == 1
    assert 8 <= run.classified < len(run.inputs)
    assert all("gave up after 3 attempts" in r["error"] for r in run.failed), run.failed[:3]
    assert any(r["error"].startswith("not sent: the server stopped answering") for r in run.failed)


def test_client_times_out_and_retries_a_frozen_server(fresh_server: TritonServer, photos: list[Path]) -> None:
    """tritonserver stopped (SIGSTOP) for 4 s: requests time out after 1 s, are retried, and all
    photos are classified once it continues."""
    pid = faults.triton_pid(fresh_server)

    def freeze() -> None:
        faults.kill(pid, signal.SIGSTOP)
        time.sleep(4)
        faults.kill(pid, signal.SIGCONT)

    run = faults.run_client_with_fault(
        fresh_server.grpc_url,
        "grpc",
        photos[:40],
        freeze,
        after_results=8,
        client_args=["--batch-size", "4", "--timeout", "1", "--retries", "8", "--backoff", "0.5"],
    )
    assert run.accounted_for() and run.returncode == 0, run.failed[:3]
    assert "requests retried" in run.stderr
