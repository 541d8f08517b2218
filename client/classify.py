#!/usr/bin/env python3
"""Classify photos with the Triton ensemble (encoded bytes in, labels out).

    python client/classify.py photo.jpg
    python client/classify.py photos/ more.png --protocol grpc --top-k 3 --json
    python client/classify.py big_folder/ --batch-size 16 --concurrency 8

Sends each file's bytes as they are (JPEG, PNG, ...; the server decodes), several images per
request (``--batch-size``) and several requests in flight (``--concurrency``, asyncio), and
reads the answer through Triton's classification extension (``"score:index:label"``).

Output: one line per image, ``path: label score``, or ``path: unsure (label score, label
score)`` when the top probability is below the threshold the served model carries (its config's
``unsure_below`` parameter, chosen on val when the model was calibrated: such photos should go
to a person). With ``--json`` one object per line ``{"path", "label", "score", "unsure",
"top_k": [[label, score], ...]}`` (``label`` and ``score`` are the top-1 either way;
``"error"`` instead for an image that failed). ``--save-unsure DIR`` copies the unsure photos
into ``DIR`` (flat, file names kept) for a person to sort into class folders. Every input gets
exactly one line, also when the run is interrupted. A summary goes to stderr. Exit status: 0
every image classified, 1 some failed, 2 bad usage or no images, 3 server unreachable or model
not ready at the start, 130 interrupted.

Failures: a request the server rejects as invalid (a file that is not an image, over a size
limit) is not retried; a request with several images is then split so that only the bad
files fail. Anything else (connection refused or reset, server restarting or unavailable,
no answer within ``--timeout``) is retried with exponential backoff (``--retries``,
``--backoff``): classification is idempotent, so sending a request twice is harmless. An image
whose request still fails is reported with the last error and the number of attempts; once one
request has given up, the images not sent yet are reported as not sent instead of each waiting
through its own retries.

Remote servers: ``--tls`` (or an ``https://`` / ``grpcs://`` URL) encrypts the connection and
verifies the server's certificate against the system roots or ``--ca-cert``; ``--client-cert``
with ``--client-key`` adds a client certificate (mutual TLS). Triton serves TLS on gRPC itself
(``--grpc-use-ssl``); HTTPS is usually a reverse proxy in front of its HTTP port.

Needs ``tritonclient[all]``, numpy, tqdm and this project's core package (``pip install .``:
no torch), which owns the default model's name and the tensor names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tqdm import tqdm
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions
from tritonclient.utils import InferenceServerException

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.shipped import DEFAULT_NET, PROBABILITIES
from wastesort.triton.default import choose, marked_in
from wastesort.triton.naming import default_ensembles

DEFAULT_MODELS = default_ensembles(DEFAULT_NET)
#: Files picked up when walking a directory (files named explicitly are always sent).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_SERVER, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
#: Statuses that mean "this request is wrong": retrying cannot help (HTTP 4xx; gRPC codes).
NOT_RETRYABLE = frozenset(
    {
        "StatusCode.INVALID_ARGUMENT",
        "StatusCode.NOT_FOUND",
        "StatusCode.ALREADY_EXISTS",
        "StatusCode.PERMISSION_DENIED",
        "StatusCode.UNAUTHENTICATED",
        "StatusCode.FAILED_PRECONDITION",
        "StatusCode.OUT_OF_RANGE",
        "StatusCode.UNIMPLEMENTED",
    }
)
#: gRPC channel: reconnect quickly once a restarted server is back (gRPC's default backoff grows to 2 minutes)
GRPC_RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class Tls:
    """TLS settings: off, or on with optional CA bundle and client certificate (PEM files)."""

    enabled: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        """The HTTPS context: verifies the server (system roots or ``ca_cert``), hostname included."""
        context = ssl.create_default_context(cafile=self.ca_cert)
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context


@dataclass(frozen=True)
class Protocol:
    """What differs between tritonclient's HTTP and gRPC asyncio clients; everything else in
    this file is one code path for both."""

    name: str
    module: ModuleType
    port_env: str
    default_port: int

    def client(self, url: str, timeout_s: float, tls: Tls = Tls()) -> Any:
        if self is HTTP:
            if tls.enabled:
                return self.module.InferenceServerClient(url, conn_timeout=timeout_s, ssl=True, ssl_context=tls.ssl_context())
            return self.module.InferenceServerClient(url, conn_timeout=timeout_s)
        keepalive = KeepAliveOptions()
        channel_args = [
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            *GRPC_RECONNECT,
        ]
        if tls.enabled:
            return self.module.InferenceServerClient(
                url,
                ssl=True,
                root_certificates=tls.ca_cert,
                private_key=tls.client_key,
                certificate_chain=tls.client_cert,
                channel_args=channel_args,
            )
        return self.module.InferenceServerClient(url, channel_args=channel_args)

    def json_kw(self) -> dict[str, Any]:
        """gRPC returns protobuf messages unless asked for JSON; HTTP always returns JSON."""
        return {"as_json": True} if self is GRPC else {}

    def infer_kw(self, timeout_s: float) -> dict[str, Any]:
        return {"client_timeout": timeout_s} if self is GRPC else {}

    def default_url(self) -> str:
        return f"127.0.0.1:{os.environ.get(self.port_env, self.default_port)}"


HTTP = Protocol("http", http_aio, "TRITON_HTTP_PORT", 8000)
GRPC = Protocol("grpc", grpc_aio, "TRITON_GRPC_PORT", 8001)
PROTOCOLS = {p.name: p for p in (HTTP, GRPC)}


class ClientError(RuntimeError):
    """Server unreachable, model missing or unusable; the message says what to do."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for failures that are not the request's fault: ``retries`` more
    attempts, waiting ``backoff_s``, then twice that, ... up to ``max_backoff_s``, each wait
    jittered by +-25% so that many clients do not return in step. The defaults ride out a
    server restart of about 20 s."""

    retries: int = 6
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)


def retryable(exc: BaseException) -> bool:
    """True for transport and server-side failures (connection refused or reset, unavailable,
    internal, timeout); False when the server says the request itself is wrong (HTTP 4xx,
    gRPC INVALID_ARGUMENT and the like), which no retry can fix."""
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        if "is restricted" in (exc.message() or ""):  # a missing --header key: Triton says UNAVAILABLE over gRPC
            return False
        return not (status in NOT_RETRYABLE or (status.isdigit() and status.startswith("4")))
    return isinstance(exc, (OSError, aiohttp.ClientError, asyncio.TimeoutError))


class GaveUp(Exception):
    """A request still failed after every retry; ``attempts`` were made, ``last`` is the final error."""

    def __init__(self, attempts: int, last: BaseException) -> None:
        super().__init__(f"gave up after {attempts} attempt{'s' * (attempts > 1)}: {_message(last)}")
        self.attempts, self.last = attempts, last


@dataclass
class Result:
    """One input file: ``label``/``score``/``top_k`` when classified (``unsure`` when the score
    is below the model's threshold; ``runner_up`` is the second class), ``error`` when not."""

    path: str
    label: str | None = None
    score: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    unsure: bool = False
    runner_up: tuple[str, float] | None = None

    def to_json(self) -> str:
        if self.error is not None:
            return json.dumps({"path": self.path, "label": None, "score": None, "unsure": None, "top_k": [], "error": self.error})
        top = [[k, s] for k, s in self.top_k]
        return json.dumps({"path": self.path, "label": self.label, "score": self.score, "unsure": self.unsure, "top_k": top})

    def to_text(self) -> str:
        if self.error is not None:
            return f"{self.path}: ERROR {self.error}"
        if self.unsure:
            shown = [(self.label, self.score), *([self.runner_up] if self.runner_up else [])]
            return f"{self.path}: unsure (" + ", ".join(f"{k} {s:.2f}" for k, s in shown) + ")"
        rest = ", ".join(f"{k} {s:.3f}" for k, s in self.top_k[1:])
        return f"{self.path}: {self.label} {self.score:.3f}" + (f" ({rest})" if rest else "")


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs from the model's metadata and config."""

    name: str
    input_name: str
    output_name: str
    max_batch_size: int
    #: answers whose top probability is below this are unsure (``None``: the model carries none)
    threshold: float | None = None
    #: length of the output vector (0 when the metadata does not fix it)
    classes: int = 0


def threshold_in(config: dict) -> float | None:
    """The unsure threshold a model config (HTTP or gRPC JSON) carries, or ``None``."""
    config = config.get("config", config)
    value = config.get("parameters", {}).get(THRESHOLD_PARAMETER, {}).get("string_value")
    return float(value) if value not in (None, "") else None


def find_images(inputs: list[str]) -> tuple[list[Path], list[Result]]:
    """Files as given, plus image files found recursively under directories (sorted).
    Paths that do not exist come back as failed results."""
    found: list[Path] = []
    missing: list[Result] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            missing.append(Result(str(path), error="no such file or directory"))
    return found, missing


def parse_classes(row: np.ndarray) -> list[tuple[str, float]]:
    """Triton classification strings ``b"score:index:label"`` -> ``[(label, score), ...]``
    (the index stands in for the label when the model has no labels file)."""
    out = []
    for item in row:
        parts = (item.decode() if isinstance(item, bytes) else str(item)).split(":", 2)
        out.append((parts[2] if len(parts) > 2 else parts[1], float(parts[0])))
    return out


def chunks(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Classifier:
    """An open connection to one model on one server."""

    def __init__(
        self,
        proto: Protocol,
        url: str,
        model: str | None,
        top_k: int,
        timeout_s: float,
        tls: Tls = Tls(),
        retry: RetryPolicy = RetryPolicy(),
        headers: dict[str, str] | None = None,
        all_classes: bool = False,
    ) -> None:
        self.proto, self.url, self.model, self.top_k, self.timeout_s = proto, url, model, top_k, timeout_s
        self.retry, self.headers = retry, headers or None
        #: ask for every class of each answer, so that :attr:`labels` becomes the model's whole label set
        self.all_classes = all_classes
        #: every label the server named in an answer
        self.labels: set[str] = set()
        self.client = proto.client(url, timeout_s, tls)
        self.info: ModelInfo | None = None
        #: requests sent again after a transient failure (for the summary)
        self.retried = 0
        #: set when a request used up its retries: the server is gone, the rest is not sent
        self.gave_up: GaveUp | None = None

    async def close(self) -> None:
        await self.client.close()

    async def connect(self) -> ModelInfo:
        """Check that the server and the model are ready and read the model's metadata."""
        where = f"Triton at {self.url} ({self.proto.name})"
        kw = {"headers": self.headers}
        try:
            ready = await asyncio.wait_for(self.client.is_server_ready(**kw), self.timeout_s)
        except Exception as exc:
            hint = "Is the server running (make serve)? Is the port right (--url)?"
            raise ClientError(f"cannot reach {where}: {_message(exc)}. {hint}") from exc
        if not ready:
            raise ClientError(f"{where} is up but not ready (models still loading, or one failed to load: see the server log)")
        if self.model is None:  # the ready ensemble the rule marked (wastesort.triton.default), else the FP32 one
            ready = [name for name in DEFAULT_MODELS if await self.client.is_model_ready(name, **kw)]
            marks = {name: marked_in(await self.client.get_model_config(name, **kw, **self.proto.json_kw())) for name in ready}
            self.model = choose(ready, marks.__getitem__) or DEFAULT_MODELS[-1]
        if not await self.client.is_model_ready(self.model, **kw):
            try:
                index = await self.client.get_model_repository_index(**kw, **self.proto.json_kw())
                models = index.get("models", []) if isinstance(index, dict) else index
                ready_models = ", ".join(sorted(m["name"] for m in models if m.get("state") == "READY")) or "none"
            except InferenceServerException:  # the repository API may be restricted (--admin-key)
                ready_models = "unknown (the repository index is restricted)"
            raise ClientError(f"model {self.model!r} is not ready on {where}; ready models: {ready_models}")
        meta = await self.client.get_model_metadata(self.model, **kw, **self.proto.json_kw())
        config = await self.client.get_model_config(self.model, **kw, **self.proto.json_kw())
        config = config.get("config", config)
        inputs, outputs = meta["inputs"], meta["outputs"]
        if len(inputs) != 1 or inputs[0]["datatype"] != "BYTES":
            raise ClientError(
                f"model {self.model!r} does not take one BYTES input of encoded images ({inputs}); use an ensemble_<net> model"
            )
        names = [o["name"] for o in outputs]
        output = PROBABILITIES if PROBABILITIES in names else names[0]
        shape = [int(d) for d in outputs[names.index(output)].get("shape", [])]
        classes = shape[-1] if shape and shape[-1] > 0 else 0
        self.info = ModelInfo(self.model, inputs[0]["name"], output, int(config.get("max_batch_size", 0)), threshold_in(config), classes)
        return self.info

    async def infer(self, payloads: list[bytes]) -> list[list[tuple[str, float]]]:
        """Encoded images -> top-k ``(label, score)`` per image, in one request (one attempt,
        at most ``timeout_s`` seconds)."""
        assert self.info is not None, "connect() first"
        batched = self.info.max_batch_size > 0
        array = np.empty((len(payloads), 1) if batched else (1,), dtype=np.object_)
        array[...] = np.array(payloads, dtype=np.object_).reshape(array.shape)
        tensor = self.proto.module.InferInput(self.info.input_name, list(array.shape), "BYTES")
        tensor.set_data_from_numpy(array)
        # at least two classes: an unsure answer names the runner-up
        count = self.info.classes if self.all_classes and self.info.classes else max(self.top_k, 2)
        output = self.proto.module.InferRequestedOutput(self.info.output_name, class_count=count)
        call = self.client.infer(self.model, [tensor], outputs=[output], headers=self.headers, **self.proto.infer_kw(self.timeout_s))
        result = await asyncio.wait_for(call, self.timeout_s)
        classes = result.as_numpy(self.info.output_name).reshape(len(payloads), -1)
        return [parse_classes(row) for row in classes]

    async def infer_with_retries(self, payloads: list[bytes]) -> list[list[tuple[str, float]]]:
        """:meth:`infer`, retried with backoff while the failure is :func:`retryable`.

        Raises:
            InferenceServerException: the server rejected the request (not retryable).
            GaveUp: still failing after ``retry.retries`` retries.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self.infer(payloads)
            except Exception as exc:
                if not retryable(exc):
                    raise
                if attempt > self.retry.retries:
                    raise GaveUp(attempt, exc) from exc
                self.retried += 1
                await asyncio.sleep(self.retry.delay(attempt))

    async def classify(self, paths: list[Path]) -> list[Result]:
        """One request for ``paths`` (retried on transient failures). If the server rejects it
        and it holds several images, each image is sent alone so that one bad file only fails
        itself. Returns exactly one :class:`Result` per path."""
        results: list[Result] = []
        payloads, sendable = [], []
        for path in paths:
            try:
                payloads.append(path.read_bytes())
                sendable.append(path)
            except OSError as exc:
                results.append(Result(str(path), error=f"cannot read file: {exc.strerror or exc}"))
        if not sendable:
            return results
        if self.gave_up is not None:
            error = f"not sent: the server stopped answering (an earlier request {self.gave_up})"
            return results + [Result(str(path), error=error) for path in sendable]
        try:
            threshold = self.info.threshold if self.info else None
            for path, top in zip(sendable, await self.infer_with_retries(payloads), strict=True):
                self.labels.update(label for label, _ in top)
                unsure = threshold is not None and top[0][1] < threshold
                results.append(Result(str(path), top[0][0], top[0][1], top[: self.top_k], unsure=unsure, runner_up=(top[1:2] or [None])[0]))
        except GaveUp as exc:
            self.gave_up = exc
            results.extend(Result(str(path), error=str(exc)) for path in sendable)
        except InferenceServerException as exc:
            if len(sendable) == 1:
                results.append(Result(str(sendable[0]), error=_message(exc)))
            else:
                for path in sendable:
                    results.extend(await self.classify([path]))
        return results


def _message(exc: BaseException) -> str:
    if isinstance(exc, InferenceServerException):
        return exc.message() or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer within the timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def run(args: argparse.Namespace, paths: list[Path], emit: Any) -> tuple[list[Result], int, set[str]]:
    """Classify every path; ``emit(result)`` is called as each one completes. Returns the
    results, how many requests were retried and the labels the server named (all of the
    model's with ``--truth-from-folder``)."""
    proto = PROTOCOLS[args.protocol]
    retry = RetryPolicy(args.retries, args.backoff)
    url = args.url or proto.default_url()
    classifier = Classifier(proto, url, args.model, args.top_k, args.timeout, args.tls, retry, args.headers, args.truth_from_folder)
    try:
        info = await classifier.connect()
        args.model = classifier.model  # the default resolved against the server
        batch_size = args.batch_size
        if info.max_batch_size == 0:
            batch_size = 1
        elif batch_size > info.max_batch_size:
            print(
                f"note: {info.name} takes at most {info.max_batch_size} images per request; using --batch-size {info.max_batch_size}",
                file=sys.stderr,
            )
            batch_size = info.max_batch_size
        gate = asyncio.Semaphore(args.concurrency)

        async def one_batch(batch: list[Path]) -> list[Result]:
            async with gate:
                return await classifier.classify(batch)

        results: list[Result] = []
        with tqdm(total=len(paths), unit="img", desc="classify", disable=args.quiet or None, file=sys.stderr, leave=False) as bar:
            for task in asyncio.as_completed([one_batch(b) for b in chunks(paths, batch_size)]):
                done = await task
                for result in done:
                    emit(result)
                results.extend(done)
                bar.update(len(done))
        return results, classifier.retried, classifier.labels
    finally:
        await classifier.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Classify photos with the waste-sorting model on a Triton server.",
        epilog="Exit status: 0 all classified, 1 some failed, 2 usage/no images, 3 server or model unavailable, 130 interrupted.",
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or directories (searched recursively)")
    parser.add_argument(
        "--url",
        default=None,
        help="host:port (default 127.0.0.1:$TRITON_HTTP_PORT or :8000 for http, :$TRITON_GRPC_PORT or :8001 for grpc)",
    )
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="http")
    parser.add_argument(
        "--model",
        default=None,
        help=f"model taking encoded image bytes (default: the marked ready one of {', '.join(DEFAULT_MODELS)})",
    )
    parser.add_argument("--top-k", type=int, default=1, help="classes to report per image (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per request (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per attempt of a request (default: %(default)s)")
    parser.add_argument(
        "--retries",
        type=int,
        default=RetryPolicy.retries,
        help="retries after a connection failure, server error or timeout; never after a rejected input (default: %(default)s)",
    )
    parser.add_argument(
        "--backoff",
        type=float,
        default=RetryPolicy.backoff_s,
        help="seconds before the first retry, doubling each time (default: %(default)s)",
    )
    parser.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="HTTP header / gRPC metadata sent with every call (e.g. a restricted-API key); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--save-unsure", type=Path, default=None, metavar="DIR", help="copy the photos the model was unsure about into DIR (flat)"
    )
    parser.add_argument(
        "--truth-from-folder",
        action="store_true",
        help="the nearest folder above each file that is named after one of the model's classes is its true class "
        "(ImageFolder layout): print top-1 accuracy and per-class F1 to stderr; files under no such folder are not scored",
    )
    tls = parser.add_argument_group("TLS (remote servers)")
    tls.add_argument("--tls", action="store_true", help="encrypt and verify the server (implied by https:// or grpcs:// URLs)")
    tls.add_argument("--ca-cert", help="PEM bundle to verify the server with (default: the system's roots)")
    tls.add_argument("--client-cert", help="PEM client certificate, for servers that require one (with --client-key)")
    tls.add_argument("--client-key", help="PEM private key of --client-cert")
    args = parser.parse_args(argv)
    for name in ("top_k", "batch_size", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        parser.error("--retries and --backoff must be at least 0, --timeout above 0")
    headers = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            parser.error(f"--header {item!r}: expected NAME=VALUE")
        headers[name.strip().lower()] = value
    args.headers = headers
    if args.url:
        scheme = args.url.split("://", 1)[0].lower() if "://" in args.url else ""
        args.url = args.url.split("://", 1)[-1].rstrip("/")
        args.tls = args.tls or scheme in ("https", "grpcs")
    if bool(args.client_cert) != bool(args.client_key):
        parser.error("--client-cert and --client-key go together")
    for name in ("ca_cert", "client_cert", "client_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")
    if (args.ca_cert or args.client_cert) and not args.tls:
        args.tls = True
    args.tls = Tls(args.tls, args.ca_cert, args.client_cert, args.client_key)
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths, failed = find_images(args.inputs)
    reported: set[str] = set()

    def emit(result: Result) -> None:
        reported.add(result.path)
        try:
            print(result.to_json() if args.json else result.to_text(), flush=True)
        except BrokenPipeError:
            # the reader of stdout went away (``| head``): the run goes on with stdout discarded,
            # so that --save-unsure copies and the summary on stderr lose nothing
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    for result in failed:
        emit(result)
    if not paths:
        print("error: no image files found in " + " ".join(args.inputs), file=sys.stderr)
        return EXIT_USAGE
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results, retried, labels = asyncio.run(run(args, paths, emit))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVER
    except KeyboardInterrupt:
        # nothing is lost silently: every image not yet answered is listed as not classified
        pending = [p for p in paths if str(p) not in reported]
        for path in pending:
            emit(Result(str(path), error="not classified: the client was interrupted"))
        print(f"interrupted: {len(pending)} of {len(paths)} images were not classified", file=sys.stderr)
        return EXIT_INTERRUPTED
    results += failed
    bad = [r for r in results if r.error is not None]
    if not args.quiet:
        seconds = time.perf_counter() - start
        print(
            f"classified {len(results) - len(bad)} of {len(results)} images in {seconds:.2f} s with {args.model} over {args.protocol}"
            + (f"; {len(bad)} failed" if bad else "")
            + (f"; {retried} requests retried" if retried else ""),
            file=sys.stderr,
        )
    unsure = [r for r in results if r.error is None and r.unsure]
    if not args.quiet and unsure:
        print(f"unsure about {len(unsure)} of {len(results)} images (below the model's threshold): for a person to sort", file=sys.stderr)
    if args.save_unsure is not None:
        copied = save_unsure(unsure, args.save_unsure)
        print(f"copied {len(copied)} unsure photos to {args.save_unsure}", file=sys.stderr)
    if args.truth_from_folder:
        print(accuracy_report(results, labels), file=sys.stderr)
    return EXIT_SOME_FAILED if bad else EXIT_OK


def save_unsure(unsure: list[Result], folder: Path) -> list[Path]:
    """Copy each unsure photo into ``folder`` under its own file name; a name already taken by
    another photo gets ``-1``, ``-2``, ... before its suffix. Returns the copies' paths."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for result in unsure:
        source = Path(result.path)
        target, n = folder / source.name, 0
        while target.exists() and target.read_bytes() != source.read_bytes():
            n += 1
            target = folder / f"{source.stem}-{n}{source.suffix}"
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def true_class(path: str | Path, labels: set[str]) -> str | None:
    """The true class of a photo in ImageFolder layout: the name of the nearest folder above it
    that is one of ``labels`` (so ``site/glass/day2/x.jpg`` is glass), or ``None`` when no folder
    above it names a class (a photo not sorted yet, in ``site/`` itself)."""
    return next((parent.name for parent in Path(path).resolve().parents if parent.name in labels), None)


def accuracy_report(results: list[Result], labels: set[str]) -> str:
    """Top-1, coverage and per-class precision/recall/F1 of the results against
    :func:`true_class` (``labels``: the model's classes); failed images count as wrong, images
    with no true class are counted apart, not scored."""
    truth = {r.path: true_class(r.path, labels) for r in results}
    unscored = [r for r in results if truth[r.path] is None]
    results = [r for r in results if truth[r.path] is not None]
    lines = []
    if unscored:
        folders = sorted({str(Path(r.path).parent) for r in unscored})
        shown = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more" if len(folders) > 3 else "")
        why = f"no folder above them is named after a class ({', '.join(sorted(labels))})" if labels else "no image was classified"
        lines.append(f"not scored: {len(unscored)} image{'s' * (len(unscored) != 1)} in {shown}: {why}")
    if not results:
        return "\n".join(lines)
    correct = sum(r.label == truth[r.path] for r in results)
    lines.append(f"top-1 {correct / len(results):.4f} ({correct} of {len(results)} images; true class = folder name)")
    answered = [r for r in results if r.error is None and not r.unsure]
    if len(answered) < len(results):  # the model said unsure about some (failed images are not answered either)
        right = sum(r.label == truth[r.path] for r in answered)
        lines.append(
            f"answered {len(answered)} of {len(results)} ({len(answered) / len(results):.1%} coverage): "
            f"{right / max(len(answered), 1):.4f} right among the answered; "
            f"answered wrongly: {(len(answered) - right) / len(results):.1%} of all images"
        )
    actual = [truth[r.path] for r in results]
    for c in sorted(set(actual)):
        tp = sum(r.label == c and truth[r.path] == c for r in results)
        predicted = sum(r.label == c for r in results)
        precision, recall = tp / max(predicted, 1), tp / max(actual.count(c), 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(f"  {c}: precision {precision:.3f} recall {recall:.3f} F1 {f1:.3f} ({actual.count(c)} images)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
