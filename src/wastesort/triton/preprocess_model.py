"""Triton Python-backend model ``preprocess``: encoded image bytes -> the classifier's input.

Contract (see ``wastesort.triton.config``):

* input ``IMAGE_BYTES``: BYTES ``[N, 1]``, one encoded image (JPEG, PNG, anything PIL reads)
  per row; images in one request may have different sizes.
* output ``IMAGES``: FP32 ``[N, 3, H, W]``, RGB, ``(x/255 - mean)/std``, per the preprocessing
  contract the config carries in its parameters (copied from the ONNX model's metadata).

One ``execute`` call takes every request the dynamic batcher gathered and decodes all their
images on one thread pool (PIL releases the GIL; JPEGs are DCT-downscaled with ``Image.draft``).
A request with an image that cannot be decoded, or that breaks a limit (parameters
``max_image_bytes``: encoded bytes per image; ``max_pixels``: width x height, checked from the
header before decoding), gets its own ``INVALID_ARG`` error naming every bad image; the other
requests of the batch are answered normally.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from wastesort.contract import PreprocessContract
from wastesort.preprocess import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError, preprocess_into
from wastesort.triton.responses import config_parameters, invalid_argument


def _publish_instance_deaths() -> list[object]:
    """Publish ``$WASTESORT_INSTANCE_DEATHS`` (set by ``wastesort.triton.supervise``: dead
    Python-backend instances per model since the supervisor started) as the gauge
    ``wastesort_instance_deaths{model=...}`` on Triton's metrics endpoint. Returns the metric
    objects, which must stay referenced to stay published."""
    raw = os.environ.get("WASTESORT_INSTANCE_DEATHS")
    if raw is None or not hasattr(pb_utils, "MetricFamily"):
        return []
    family = pb_utils.MetricFamily(
        name="wastesort_instance_deaths",
        description="Python-backend instances found dead by the supervisor since it started, per model",
        kind=pb_utils.MetricFamily.GAUGE,
    )
    metrics: list[object] = [family]
    for model, deaths in sorted(json.loads(raw).items()):
        metric = family.Metric(labels={"model": model})
        metric.set(float(deaths))
        metrics.append(metric)
    return metrics


class TritonPythonModel:
    """Decoder with a thread pool built once per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config_parameters(config)
        self.contract = PreprocessContract.from_metadata(params)
        self.max_pixels = int(params.get("max_pixels", DEFAULT_MAX_PIXELS))
        self.max_bytes = int(params.get("max_image_bytes", DEFAULT_MAX_BYTES))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        dims = [int(d) for d in config["output"][0]["dims"]]
        expected = [3, self.contract.height, self.contract.width]
        if dims != expected:
            raise pb_utils.TritonModelException(f"output {self.output_name} dims {dims} do not match the preprocessing contract {expected}")
        threads = int(params.get("decode_threads", "0")) or len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.empty = np.zeros((0, *expected), np.float32)
        self.death_metrics = _publish_instance_deaths()

    def _decode(self, data: bytes, out: np.ndarray) -> None:
        """Decode, resize and normalise one image into its slot of the request's batch, on a
        pool thread (cache-friendly, parallel, no per-image allocation)."""
        preprocess_into(data, self.contract, out, self.max_pixels, self.max_bytes)

    def execute(self, requests: list) -> list:
        jobs: list[tuple[np.ndarray, list[Future]]] = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            batch = np.empty((len(items), *self.empty.shape[1:]), np.float32)
            jobs.append((batch, [self.pool.submit(self._decode, bytes(item), batch[i]) for i, item in enumerate(items)]))
        return [self._respond(batch, futures) for batch, futures in jobs]

    def _respond(self, batch: np.ndarray, futures: list[Future]) -> pb_utils.InferenceResponse:
        errors = []
        for i, future in enumerate(futures):
            try:
                future.result()
            except ImageDecodeError as exc:
                errors.append(f"image at index {i} of {len(futures)} in this request: {exc}")
            except Exception as exc:  # anything else PIL may raise must not take the model down
                errors.append(f"image at index {i} of {len(futures)} in this request: unexpected {type(exc).__name__}: {exc}")
        if errors:
            return invalid_argument("; ".join(errors))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, batch)])

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
