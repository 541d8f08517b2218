"""docker-compose.yml and its Dockerfiles: they parse, and services, profiles, GPU
reservations, ports, health check, mounts and the pinned release are as the README documents."""

from __future__ import annotations

import re

import yaml

from wastesort.paths import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
RELEASE = "24.10"


def _has_gpu(service: dict) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_services_and_profiles() -> None:
    assert set(SERVICES) == {"tritonserver", "tritonserver-cpu", "build", "perf"}
    assert "profiles" not in SERVICES["tritonserver"]  # `docker compose up` serves on the GPU
    assert SERVICES["tritonserver-cpu"]["profiles"] == ["cpu"]
    assert SERVICES["build"]["profiles"] == ["build"] and SERVICES["perf"]["profiles"] == ["perf"]


def test_one_release_everywhere() -> None:
    """Plans only load in the TensorRT that built them: server, build and SDK images share a release."""
    tags = [SERVICES[s]["image"] for s in SERVICES]
    assert all(tag.endswith(f":{RELEASE}") or tag.endswith(f":{RELEASE}-py3-sdk") for tag in tags), tags
    for name in ("tritonserver", "tritonserver-cpu", "build", "perf"):
        assert SERVICES[name]["build"]["args"]["RELEASE"] == RELEASE
    for dockerfile, suffix in (("tritonserver.Dockerfile", "-py3"), ("build.Dockerfile", "-py3"), ("perf.Dockerfile", "-py3-sdk")):
        text = (REPO_ROOT / "docker" / dockerfile).read_text()
        assert f"ARG RELEASE={RELEASE}" in text and re.search(rf"^FROM nvcr\.io/nvidia/\w+:\$\{{RELEASE\}}{suffix}( AS \w+)?$", text, re.M)
    assert "tritonserver:${RELEASE}-py3-sdk" in (REPO_ROOT / "docker" / "perf.Dockerfile").read_text()


def test_gpu_server() -> None:
    server = SERVICES["tritonserver"]
    assert _has_gpu(server) and server["shm_size"]
    assert server["ports"] == ["127.0.0.1:8000:8000", "127.0.0.1:8001:8001", "127.0.0.1:8002:8002"]
    assert "./model_repository:/models:ro" in server["volumes"]
    assert "/v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert "--model-config-name=gpu" in server["command"] and "--model-control-mode=none" in server["command"]


def test_servers_run_under_the_supervisor() -> None:
    """A dead Python-backend instance restarts the server instead of failing every request."""
    for name in ("tritonserver", "tritonserver-cpu"):
        command = SERVICES[name]["command"]
        assert command[:4] == ["python3", "-m", "wastesort.triton.supervise", "--"] and command[4] == "tritonserver"
        assert SERVICES[name]["init"] is True and SERVICES[name]["restart"] == "unless-stopped"


def test_cpu_profile_serves_without_a_gpu() -> None:
    cpu = SERVICES["tritonserver-cpu"]
    assert not _has_gpu(cpu)
    assert not any(arg.startswith("--model-config-name") for arg in cpu["command"])  # default configs: ORT in the Python backend
    assert "./model_repository:/models:ro" in cpu["volumes"]


def test_build_and_perf_services() -> None:
    build = SERVICES["build"]
    assert _has_gpu(build) and build["command"][:2] == ["python", "build/build.py"]
    assert SERVICES["perf"]["depends_on"]["tritonserver"]["condition"] == "service_healthy"
    perf = SERVICES["perf"]
    assert perf["command"][:2] == ["python3", "perf/run.py"] and "--server" in perf["command"]
    assert perf["build"]["dockerfile"] == "docker/perf.Dockerfile" and perf["network_mode"] == "service:tritonserver"
