"""Triton Python-backend step that counts a GPU classifier's answers: the last step of an
ensemble's ``configs/gpu.pbtxt``, after a classifier on Triton's onnxruntime or TensorRT backend
(which cannot export custom metrics of their own).

Contract: input ``PROBABILITIES`` FP32 ``[N, C]`` -> output ``PROBABILITIES``, the same values.
Parameters: ``counted_as`` (the classifier's name, the ``model`` label of the metrics, so that
dashboards and alerts read the same on CPU and GPU) and ``unsure_below`` (the classifier's
threshold). One ``execute`` counts every request the batcher gathered at once
(:class:`~wastesort.triton.metrics.AnswerMetrics`); rows that are not finite are passed on
uncounted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from wastesort.confidence import THRESHOLD_PARAMETER
from wastesort.shipped import PROBABILITIES
from wastesort.triton.metrics import AnswerMetrics
from wastesort.triton.naming import COUNTED_AS_PARAMETER
from wastesort.triton.responses import config_parameters


class TritonPythonModel:
    """Counts and passes the probabilities on."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = config_parameters(config)
        label_file = pb_utils.get_output_config_by_name(config, PROBABILITIES).get("label_filename", "")
        path = Path(args["model_repository"]) / label_file
        if not label_file or not path.is_file():
            raise pb_utils.TritonModelException(f"{args['model_name']}: its output names no labels file beside the config")
        threshold = params.get(THRESHOLD_PARAMETER)
        counted_as = params.get(COUNTED_AS_PARAMETER, args["model_name"])
        self.metrics = AnswerMetrics(counted_as, tuple(path.read_text().split()), float(threshold) if threshold else None)

    def execute(self, requests: list) -> list:
        arrays = [pb_utils.get_input_tensor_by_name(request, PROBABILITIES).as_numpy() for request in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        finite = np.isfinite(batch).all(axis=1)
        if finite.any():
            self.metrics.count(batch[finite])
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(PROBABILITIES, array)]) for array in arrays]
