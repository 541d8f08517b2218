"""The client over TLS: a real tritonserver serving gRPC with a certificate from a throwaway CA
(openssl), and the client verifying it; plain and unverified connections are refused."""

from __future__ import annotations

import io
import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wastesort.labels import LABELS
from wastesort.paths import REPO_ROOT
from wastesort.synthetic import make_image
from wastesort.triton.server import TritonServer

CLIENT = REPO_ROOT / "client" / "classify.py"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(root: Path) -> dict[str, Path]:
    """A CA, and a server certificate it signed for 127.0.0.1 (PEM files in ``root``)."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=wastesort test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=root,
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr", cwd=root)
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-extfile", "san.ext", "-out", "server.pem", cwd=root,
    )  # fmt: skip
    return {"ca": root / "ca.pem", "cert": root / "server.pem", "key": root / "server.key"}


def test_tls_arguments_build_verifying_clients(tmp_path: Path, client_module) -> None:
    classify = client_module
    args = classify.parse_args(["x.jpg", "--url", "grpcs://triton.example:8001"])
    assert args.url == "triton.example:8001" and args.tls.enabled and args.tls.ca_cert is None
    assert not classify.parse_args(["x.jpg", "--url", "http://h:8000"]).tls.enabled
    context = classify.Tls(True).ssl_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(SystemExit):
        classify.parse_args(["x.jpg", "--client-cert", str(tmp_path / "c.pem")])  # without --client-key
    with pytest.raises(SystemExit):
        classify.parse_args(["x.jpg", "--ca-cert", str(tmp_path / "missing.pem")])


@pytest.mark.server
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make the test certificates")
def test_client_classifies_over_grpc_tls_and_refuses_unverified_servers(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    photo = tmp_path / "photo.jpg"
    buf = io.BytesIO()
    make_image(LABELS[1], np.random.default_rng(5), (320, 240)).save(buf, "JPEG", quality=90)
    photo.write_bytes(buf.getvalue())
    tls = [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={certs['cert']}",
        f"--grpc-server-key={certs['key']}",
        f"--grpc-root-cert={certs['ca']}",
    ]
    with TritonServer(extra=tls, log_path=tmp_path / "server.log") as server:

        def client(*args: str) -> subprocess.CompletedProcess:
            cmd = [sys.executable, str(CLIENT), str(photo), "--protocol", "grpc", "--quiet", "--timeout", "10", *args]
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

        ok = client("--url", f"grpcs://{server.grpc_url}", "--ca-cert", str(certs["ca"]), "--json")
        assert ok.returncode == 0, ok.stderr
        answer = json.loads(ok.stdout)
        assert answer["path"] == str(photo) and answer["label"] in LABELS  # answered (a synthetic photo may be unsure)
        unverified = client("--url", f"grpcs://{server.grpc_url}")  # the system roots do not know our CA
        assert unverified.returncode == 3, unverified.stdout + unverified.stderr
        plain = client("--url", server.grpc_url)
        assert plain.returncode == 3, plain.stdout + plain.stderr
        assert server.is_ready()
