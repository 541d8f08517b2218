"""Triton Python-backend classifier: ONNX Runtime on CPU, for servers without the onnxruntime
backend (the tritonserver in nvidia-pytriton). NVIDIA's containers serve the same
``1/model.onnx`` with the ``onnxruntime_onnx`` config in ``configs/gpu.pbtxt`` instead.

Contract: input ``IMAGES`` FP32 ``[N, 3, H, W]`` -> outputs named in the config (``LOGITS``,
``PROBABILITIES``: FP32 ``[N, C]``). Parameters: ``onnx_file`` (in the version folder, default
``model.onnx``), ``intra_op_threads`` (0: one per core this process may use), ``allow_spinning``
("0": idle ONNX Runtime workers sleep instead of spin-waiting; see ``ServingOptions.ort_spinning``).

Metrics (Triton's custom metrics, on its metrics port beside its own): every photo answered,
by top-1 label (``wastesort_answers_total``), those below the config's ``unsure_below``
threshold (``wastesort_unsure_total``), and a histogram of the top probability
(``wastesort_top_probability``): the share of unsure answers rising is the sign that the photos
drifted from what the model knows.

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
from wastesort.triton.responses import invalid_argument

#: Upper bounds of the top-probability histogram's buckets.
TOP_PROBABILITY_BUCKETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


class AnswerMetrics:
    """The model's custom metrics; :meth:`count` records one batch of probabilities."""

    def __init__(self, model: str, labels: tuple[str, ...], threshold: float | None) -> None:
        self.labels, self.threshold = labels, threshold
        kinds = pb_utils.MetricFamily
        self.families = [
            kinds(name="wastesort_answers_total", description="Photos classified, by top-1 label", kind=kinds.COUNTER),
            kinds(
                name="wastesort_unsure_total",
                description="Photos whose top probability was below the model's unsure threshold, by top-1 label",
                kind=kinds.COUNTER,
            ),
            kinds(name="wastesort_top_probability", description="Top probability of every photo classified", kind=kinds.HISTOGRAM),
        ]
        answers, unsure, top = self.families
        self.answers = [answers.Metric(labels={"model": model, "label": label}) for label in labels]
        self.unsure = [unsure.Metric(labels={"model": model, "label": label}) for label in labels]
        self.top = top.Metric(labels={"model": model}, buckets=TOP_PROBABILITY_BUCKETS)

    def count(self, probabilities: np.ndarray) -> None:
        top, label = probabilities.max(axis=1), probabilities.argmax(axis=1)
        for index, count in zip(*np.unique(label, return_counts=True), strict=True):
            self.answers[index].increment(float(count))
        if self.threshold is not None:
            below = label[top < self.threshold]
            for index, count in zip(*np.unique(below, return_counts=True), strict=True):
                self.unsure[index].increment(float(count))
        for value in top:
            self.top.observe(float(value))


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
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
        if self.metrics is not None and finite.any() and PROBABILITIES in self.output_names:
            self.metrics.count(outputs[self.output_names.index(PROBABILITIES)][finite])
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
