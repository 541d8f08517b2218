"""The serving models' custom metrics (Triton's ``pb_utils.MetricFamily``, on its metrics port
beside its own; imports ``triton_python_backend_utils``, so only importable inside a backend stub).

Every photo answered, by top-1 label (``wastesort_answers_total``), those below the model's
``unsure_below`` threshold (``wastesort_unsure_total``), and a histogram of the top probability
(``wastesort_top_probability``), each labelled with the classifier's name (``model``): the share
of unsure answers rising is the sign that the photos drifted from what the model knows. The CPU
classifier counts its own answers; on a GPU, where the classifier runs on Triton's onnxruntime or
TensorRT backend, the ensemble's ``<classifier>_answers`` step counts them under the same name.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

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
