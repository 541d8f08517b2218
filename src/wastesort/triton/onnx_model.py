"""Triton Python-backend classifier: ONNX Runtime on CPU, for servers without the onnxruntime
backend (the tritonserver in nvidia-pytriton). NVIDIA's containers serve the same
``1/model.onnx`` with the ``onnxruntime_onnx`` config in ``configs/gpu.pbtxt`` instead.

Contract: input ``IMAGES`` FP32 ``[N, 3, H, W]`` -> outputs named in the config (``LOGITS``,
``PROBABILITIES``: FP32 ``[N, C]``). Parameters: ``onnx_file`` (in the version folder, default
``model.onnx``), ``intra_op_threads`` (0: one per core this process may use), ``allow_spinning``
("0": idle ONNX Runtime workers sleep instead of spin-waiting; see ``ServingOptions.ort_spinning``).

Metrics: every photo answered is counted (:class:`~wastesort.triton.metrics.AnswerMetrics`,
with the config's ``unsure_below`` threshold) under this model's name, except all-zero images
(Triton's warm-up); on a GPU the ``<classifier>_answers`` step of the ensemble counts them instead.

The session is built once per instance. One ``execute`` call concatenates every request the
dynamic batcher gathered, runs the session once, and splits the outputs back per request. A
request whose outputs are not finite (its tensor held NaN or infinity) gets an ``INVALID_ARG``
error naming the images instead of NaN probabilities; the other requests are answered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.inference import OnnxClassifier
from wastesort.shipped import PROBABILITIES
from wastesort.triton.metrics import AnswerMetrics
from wastesort.triton.responses import config_parameters, invalid_argument


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config_parameters(config)
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        threads = int(params.get("intra_op_threads", "0")) or len(os.sched_getaffinity(0))
        self.classifier = OnnxClassifier(path, threads=threads, spinning=params.get("allow_spinning", "1") != "0")
        self.input_name = config["input"][0]["name"]
        if self.input_name != self.classifier.input_name:
            raise pb_utils.TritonModelException(f"config input {self.input_name!r} is not the ONNX input {self.classifier.input_name!r}")
        dims = [int(d) for d in config["input"][0]["dims"]]
        expected = [3, self.classifier.contract.height, self.classifier.contract.width]
        if dims != expected:
            raise pb_utils.TritonModelException(f"input dims {dims} do not match the model's contract {expected}")
        self.output_names = [output["name"] for output in config["output"]]
        threshold = params.get(THRESHOLD_PARAMETER)
        self.metrics = None
        if hasattr(pb_utils, "MetricFamily"):  # older Triton releases have no custom metrics
            labels = self.classifier.contract.labels
            self.metrics = AnswerMetrics(args["model_name"], labels, float(threshold) if threshold else None)

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy() for request in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            outputs = self.classifier.run(self.output_names, batch)
        except Exception as exc:  # an ORT failure fails this batch's requests, not the model
            error = pb_utils.TritonError(f"ONNX Runtime failed on a batch of {len(batch)}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        finite = np.isfinite(outputs[0]).all(axis=1)
        # Triton's warm-up sends all-zero images; no decoded photo normalises to exactly zero
        # everywhere while a contract's means times 255 are not whole numbers (ImageNet's, 0.5)
        counted = finite & batch.reshape(len(batch), -1).any(axis=1)
        if self.metrics is not None and counted.any() and PROBABILITIES in self.output_names:
            self.metrics.count(outputs[self.output_names.index(PROBABILITIES)][counted])
        responses, start = [], 0
        for array in arrays:
            stop = start + len(array)
            bad = np.flatnonzero(~finite[start:stop])
            if bad.size:
                message = f"non-finite scores for image(s) at index {bad.tolist()} of {len(array)}: the input has NaN or infinity"
                responses.append(invalid_argument(message))
            else:
                pieces = [np.ascontiguousarray(out[start:stop]) for out in outputs]
                tensors = [pb_utils.Tensor(name, piece) for name, piece in zip(self.output_names, pieces, strict=True)]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start = stop
        return responses
