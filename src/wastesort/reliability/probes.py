"""The bad-input matrix: every kind of bad (and awkward but valid) input, sent to a running
Triton server, with what must come back.

A :class:`Probe` is one request to one model (the ensemble, ``preprocess`` or the classifier)
and its expectation:

* ``"error"``: the request fails on its own with a clear message (``match``, a regex) and an
  invalid-argument status (HTTP 400 / gRPC INVALID_ARGUMENT), and the server stays ready;
* ``"ok"``: the request is answered with finite probabilities; with ``same_as`` the answer must
  equal (within ``atol``) the answer to a reference input, e.g. an EXIF-rotated photo must be
  classified exactly like the upright one.

:func:`run_matrix` sends each probe over HTTP or gRPC with ``tritonclient``, checks the
expectation and that the server is still ready afterwards, and returns one :class:`Outcome`
per probe: the tests assert on them and ``reliability/run.py`` tabulates them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from wastesort.reliability import images as im
from wastesort.shipped import IMAGE_BYTES, IMAGES, PROBABILITIES
from wastesort.triton.naming import PREPROCESS, classifier_name, ensemble_name

# Two JPEG codings of the same picture (CMYK against RGB; the rotated frame, with other 8x8
# blocks and chroma subsampling on the other axis, against the upright one) differ a little
# in their pixels. The released EfficientNet-Lite0 moves up to 0.057 on them (MobileNetV3:
# < 0.02); ignoring the EXIF tag moves it by 0.29 on the same photos.
JPEG_RECODE_ATOL = 0.1

CLIENTS = {"http": httpclient, "grpc": grpcclient}
#: statuses that mean "your request was bad" (HTTP and gRPC spellings)
INVALID_STATUSES = {"400", "StatusCode.INVALID_ARGUMENT"}

Tensor = tuple[str, np.ndarray, str]  # (input name, array, Triton datatype)


@dataclass(frozen=True)
class Target:
    """What the probes need to know about the server's models (read from their configs)."""

    net: str
    height: int
    width: int
    max_batch_size: int
    max_pixels: int
    max_image_bytes: int

    @property
    def models(self) -> dict[str, str]:
        return {"ensemble": ensemble_name(self.net), "preprocess": PREPROCESS, "classifier": classifier_name(self.net)}

    @classmethod
    def from_server(cls, url: str, net: str, protocol: str = "http") -> Target:
        client = CLIENTS[protocol].InferenceServerClient(url)
        kw = {"as_json": True} if protocol == "grpc" else {}
        pre = client.get_model_config(PREPROCESS, **kw)
        pre = pre.get("config", pre)
        params = {k: v["string_value"] for k, v in pre.get("parameters", {}).items()}
        dims = [int(d) for d in pre["output"][0]["dims"]]
        return cls(net, dims[1], dims[2], int(pre["max_batch_size"]), int(params["max_pixels"]), int(params["max_image_bytes"]))


@dataclass(frozen=True)
class Probe:
    """One request and what must come back. ``build`` makes the inputs (and, for ``same_as``
    probes, the reference inputs) from the :class:`Target`."""

    name: str
    what: str
    model: str  # "ensemble", "preprocess" or "classifier"
    build: Callable[[Target], list[Tensor]]
    expect: str = "error"  # or "ok"
    match: str = ""
    same_as: Callable[[Target], list[Tensor]] | None = None
    atol: float = 1e-5


@dataclass
class Outcome:
    """What one probe got. ``passed``: the response met the expectation and the server was
    still ready afterwards; ``why`` says what was wrong when not."""

    probe: Probe
    protocol: str
    answered: bool
    status: str
    message: str
    latency_ms: float
    ready_after: bool
    passed: bool
    why: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


def _bytes(*payloads: bytes) -> list[Tensor]:
    array = np.empty((len(payloads), 1), dtype=np.object_)
    for i, payload in enumerate(payloads):
        array[i, 0] = payload
    return [(IMAGE_BYTES, array, "BYTES")]


def _images(t: Target, n: int = 1, dtype: Any = np.float32, fill: float | None = None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, t.height, t.width)).astype(dtype) if fill is None else np.full((n, 3, t.height, t.width), fill, dtype)
    return x


def _good(seed: int = 0) -> bytes:
    return im.encode(im.photo(seed=seed), "JPEG", quality=90)


def _side_over(pixels: int) -> tuple[int, int]:
    side = math.isqrt(pixels) + 1
    return side, side


def _bad_image_probes() -> list[Probe]:
    upright = im.photo("glass", (400, 300), seed=3)
    tagged = {o: im.with_orientation(upright, o, "PNG") for o in (3, 6, 8)}
    alpha, alpha_ref = im.with_alpha(im.photo("metal", seed=4))
    pal, pal_ref = im.palette(im.photo("trash", seed=5))
    wide, narrow = im.sixteen_bit(im.photo("paper", seed=6))
    grey = im.photo("cardboard", seed=7).convert("L")
    phone = im.photo("plastic", (640, 480), seed=8)
    good = _good()
    return [
        Probe("zero-bytes", "zero bytes", "ensemble", lambda t: _bytes(b""), match="zero bytes"),
        Probe(
            "random-bytes",
            "4 kB of random bytes",
            "ensemble",
            lambda t: _bytes(np.random.default_rng(1).bytes(4096)),
            match="not an image",
        ),
        Probe(
            "text",
            "a text file (CSV)",
            "ensemble",
            lambda t: _bytes(b"path,label\nglass1.jpg,glass\n" * 20),
            match="not an image",
        ),
        Probe("truncated-jpeg", "a JPEG cut at 60% of its bytes", "ensemble", lambda t: _bytes(im.truncated(good)), match="truncated"),
        Probe(
            "corrupt-jpeg-header",
            "a JPEG whose frame header (SOF0) is garbage",
            "ensemble",
            lambda t: _bytes(im.corrupt_jpeg_header(good)),
            match="not a decodable image|corrupt|not an image",
        ),
        Probe(
            "png-alpha",
            "RGBA PNG, transparent background",
            "ensemble",
            lambda t: _bytes(alpha),
            "ok",
            same_as=lambda t: _bytes(alpha_ref),
        ),
        Probe("png-palette", "palette (P mode) PNG", "ensemble", lambda t: _bytes(pal), "ok", same_as=lambda t: _bytes(pal_ref)),
        Probe(
            "grey-jpeg",
            "greyscale JPEG",
            "ensemble",
            lambda t: _bytes(im.encode(grey, "JPEG", quality=95)),
            "ok",
            same_as=lambda t: _bytes(im.encode(grey.convert("RGB"), "JPEG", quality=95)),
            atol=0.02,
        ),
        Probe(
            "cmyk-jpeg",
            "CMYK JPEG",
            "ensemble",
            lambda t: _bytes(im.cmyk_jpeg(phone)),
            "ok",
            same_as=lambda t: _bytes(im.encode(phone, "JPEG", quality=95)),
            atol=JPEG_RECODE_ATOL,
        ),
        Probe("png-16bit", "16-bit greyscale PNG", "ensemble", lambda t: _bytes(wide), "ok", same_as=lambda t: _bytes(narrow)),
        *(
            Probe(
                f"exif-orientation-{o}",
                f"EXIF Orientation {o} (pixels stored rotated)",
                "ensemble",
                lambda t, o=o: _bytes(tagged[o]),
                "ok",
                same_as=lambda t: _bytes(im.encode(upright, "PNG")),
            )
            for o in (3, 6, 8)
        ),
        Probe(
            "exif-orientation-6-jpeg",
            "phone JPEG, EXIF Orientation 6",
            "ensemble",
            lambda t: _bytes(im.with_orientation(phone, 6, "JPEG")),
            "ok",
            same_as=lambda t: _bytes(im.encode(phone, "JPEG", quality=95)),
            atol=JPEG_RECODE_ATOL,
        ),
        Probe("tiny-1x1", "a 1x1 image", "ensemble", lambda t: _bytes(im.encode(im.photo(size=(1, 1)), "PNG")), "ok"),
        Probe("strip-1x4000", "a 1x4000 strip", "ensemble", lambda t: _bytes(im.encode(im.photo(size=(1, 4000)), "PNG")), "ok"),
        Probe("animated-gif", "animated GIF (first frame used)", "ensemble", lambda t: _bytes(im.animated_gif(im.photo(seed=9))), "ok"),
        Probe(
            "decompression-bomb",
            "PNG declaring 20000x20000 (400 MP) in about 50 kB",
            "ensemble",
            lambda t: _bytes(im.flat_png(20000, 20000, bit_depth=1)),
            match=r"above the limit of \d+",
        ),
        Probe(
            "over-pixel-limit",
            "a valid PNG one pixel row over max_pixels",
            "ensemble",
            lambda t: _bytes(im.flat_png(*_side_over(t.max_pixels))),
            match=r"pixels, above the limit of \d+",
        ),
        Probe(
            "over-byte-limit",
            "an upload one byte over max_image_bytes",
            "ensemble",
            lambda t: _bytes(good + b"\0" * (t.max_image_bytes + 1 - len(good))),
            match=r"bytes, above the limit of \d+",
        ),
        Probe(
            "mixed-request",
            "one request: good, text, good, empty",
            "ensemble",
            lambda t: _bytes(good, b"not an image", _good(1), b""),
            match=r"index 1 of 4.*index 3 of 4",
        ),
    ]


def _request_probes() -> list[Probe]:
    """Malformed requests, straight to each model."""
    good = _good()
    return [
        Probe("full-batch", "max_batch_size images in one request", "ensemble", lambda t: _bytes(*[good] * t.max_batch_size), "ok"),
        Probe(
            "oversize-batch",
            "max_batch_size + 1 images in one request",
            "ensemble",
            lambda t: _bytes(*[good] * (t.max_batch_size + 1)),
            match="batch.size",
        ),
        Probe(
            "empty-batch",
            "a batch of zero images",
            "ensemble",
            lambda t: [(IMAGE_BYTES, np.empty((0, 1), np.object_), "BYTES")],
            match="got 0",
        ),
        Probe(
            "wrong-dtype-ensemble",
            "FP32 where encoded bytes are expected",
            "ensemble",
            lambda t: [(IMAGE_BYTES, np.zeros((1, 1), np.float32), "FP32")],
            match="data-type|datatype|BYTES",
        ),
        Probe(
            "wrong-shape-ensemble",
            "BYTES shaped [1, 2] instead of [N, 1]",
            "ensemble",
            lambda t: [(IMAGE_BYTES, np.array([[_good(), _good(1)]], dtype=np.object_), "BYTES")],
            match="shape",
        ),
        Probe(
            "wrong-input-name",
            "the image under another input name",
            "ensemble",
            lambda t: [("IMAGE", _bytes(good)[0][1], "BYTES")],
            match="IMAGE",
        ),
        Probe("good-preprocess", "encoded JPEG straight to preprocess", "preprocess", lambda t: _bytes(good), "ok"),
        Probe(
            "wrong-dtype-preprocess",
            "UINT8 pixels where encoded bytes are expected",
            "preprocess",
            lambda t: [(IMAGE_BYTES, np.zeros((1, 1), np.uint8), "UINT8")],
            match="data-type|datatype|BYTES",
        ),
        Probe("bad-bytes-preprocess", "text straight to preprocess", "preprocess", lambda t: _bytes(b"hello"), match="not an image"),
        Probe(
            "good-classifier",
            "a normalised tensor straight to the classifier",
            "classifier",
            lambda t: [(IMAGES, _images(t), "FP32")],
            "ok",
        ),
        Probe(
            "wrong-dtype-classifier",
            "FP64 tensor",
            "classifier",
            lambda t: [(IMAGES, _images(t, dtype=np.float64), "FP64")],
            match="data-type|datatype|FP32",
        ),
        Probe(
            "wrong-shape-classifier",
            "224x224 tensor for a smaller model",
            "classifier",
            lambda t: [(IMAGES, np.zeros((1, 3, t.height + 64, t.width + 64), np.float32), "FP32")],
            match="shape",
        ),
        Probe(
            "hwc-classifier",
            "HWC layout instead of CHW",
            "classifier",
            lambda t: [(IMAGES, np.zeros((1, t.height, t.width, 3), np.float32), "FP32")],
            match="shape",
        ),
        Probe(
            "nan-classifier",
            "a tensor of NaN",
            "classifier",
            lambda t: [(IMAGES, _images(t, fill=float("nan")), "FP32")],
            match="non-finite",
        ),
        Probe(
            "oversize-batch-classifier",
            "max_batch_size + 1 tensors",
            "classifier",
            lambda t: [(IMAGES, np.zeros((t.max_batch_size + 1, 3, t.height, t.width), np.float32), "FP32")],
            match="batch.size",
        ),
        Probe(
            "empty-batch-classifier",
            "a batch of zero tensors",
            "classifier",
            lambda t: [(IMAGES, np.zeros((0, 3, t.height, t.width), np.float32), "FP32")],
            match="got 0",
        ),
    ]


def matrix() -> list[Probe]:
    """Every probe, bad images first, then malformed requests."""
    return _bad_image_probes() + _request_probes()


def _infer(client: Any, module: Any, model: str, tensors: list[Tensor]) -> Any:
    inputs = []
    for name, array, dtype in tensors:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


def _first_output(result: Any, model_role: str) -> np.ndarray:
    return result.as_numpy(IMAGES if model_role == "preprocess" else PROBABILITIES)


def run_probe(url: str, protocol: str, target: Target, probe: Probe) -> Outcome:
    """Send one probe and judge the answer (see the module docstring)."""
    module = CLIENTS[protocol]
    client = module.InferenceServerClient(url)
    model = target.models[probe.model]
    tensors = probe.build(target)
    start = time.perf_counter()
    try:
        result = _infer(client, module, model, tensors)
        answered, status, message = True, "200" if protocol == "http" else "StatusCode.OK", ""
    except InferenceServerException as exc:
        result, answered, status, message = None, False, str(exc.status()), exc.message() or str(exc)
    latency_ms = (time.perf_counter() - start) * 1e3
    try:
        ready = bool(client.is_server_ready()) and all(client.is_model_ready(m) for m in target.models.values())
    except InferenceServerException:
        ready = False
    outcome = Outcome(probe, protocol, answered, status, message, latency_ms, ready, passed=False)
    outcome.why = _judge(outcome, result, client, module, model, target)
    outcome.passed = not outcome.why
    return outcome


def _judge(outcome: Outcome, result: Any, client: Any, module: Any, model: str, target: Target) -> str:
    probe = outcome.probe
    if not outcome.ready_after:
        return "server or a model was not ready afterwards"
    if probe.expect == "error":
        if outcome.answered:
            return "answered, but an error was expected"
        if outcome.status not in INVALID_STATUSES:
            return f"status {outcome.status}, expected invalid-argument"
        if probe.match and not re.search(probe.match, outcome.message, re.S):
            return f"message does not match /{probe.match}/"
        return ""
    if not outcome.answered:
        return f"failed ({outcome.status}): {outcome.message}"
    served = _first_output(result, probe.model)
    if not np.isfinite(served).all():
        return "non-finite output"
    if probe.model != "preprocess" and not np.allclose(served.sum(axis=1), 1.0, atol=1e-4):
        return "probabilities do not sum to 1"
    if probe.same_as is not None:
        reference = _first_output(_infer(client, module, model, probe.same_as(target)), probe.model)
        diff = float(np.abs(served - reference).max())
        outcome.detail["max_abs_diff"] = diff
        if diff > probe.atol:
            return f"differs from its reference input by {diff:.2g} (> {probe.atol:g})"
    return ""


def run_matrix(url: str, protocol: str, target: Target, probes: list[Probe] | None = None) -> list[Outcome]:
    """Every probe in order over one protocol."""
    return [run_probe(url, protocol, target, probe) for probe in (probes if probes is not None else matrix())]
