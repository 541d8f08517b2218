"""The accuracy gate: every variant is evaluated on the test split against the FP32 model, and
timed side by side with it, before it may be served.

Figures come from :mod:`wastesort.evaluation` (top-1, macro and per-class F1, agreement of top-1
with the FP32 model) and :mod:`wastesort.timing` (throughput, timed side by side).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wastesort.evaluation import Evaluation
from wastesort.inference import OnnxClassifier
from wastesort.shipped import LOGITS
from wastesort.timing import Timing, fixed_batch, time_interleaved

#: A variant may lose at most this many points of top-1 against FP32 (default of ``--threshold``).
DEFAULT_MAX_DROP_POINTS = 1.0
#: An INT8 variant's probabilities may differ from its FP32 model's by at most this much at the
#: median over the test photos and classes: INT8's own rounding of the network stays under it,
#: a quantised softmax output (steps of 1/255) does not.
MAX_MEDIAN_PROBABILITY_DIFF = 1e-3


def time_batches(
    paths: list[Path],
    images: np.ndarray,
    batch: int = 64,
    iters: int = 20,
    warmup: int = 3,
    threads: int = 0,
    spinning: bool = False,
) -> list[Timing]:
    """Time several ONNX models (ONNX Runtime, CPU, ``threads`` intra-op threads, 0: one per
    core) on the same batch with the project's one timing method
    (:func:`wastesort.timing.time_interleaved`); one :class:`Timing` per path.

    ``spinning`` defaults to off, as the server runs its classifier
    (``ServingOptions.ort_spinning``): with spin-waiting workers, a session that just ran
    takes a core from the next one on a 2-core machine, and the ratios measured depend on
    the order of the candidates."""
    x = fixed_batch(images, batch)
    classifiers = [OnnxClassifier(p, threads, spinning) for p in paths]
    return time_interleaved([partial(c.run, [LOGITS], x) for c in classifiers], batch, iters, warmup)


def gate(
    candidate: Evaluation, reference: Evaluation, max_drop_points: float = DEFAULT_MAX_DROP_POINTS, probabilities: bool = False
) -> tuple[bool, str]:
    """(passes, reason): a variant passes when its top-1 is at most ``max_drop_points`` below FP32
    and, with ``probabilities`` (INT8 variants), when the median difference of its probabilities
    from FP32's is at most :data:`MAX_MEDIAN_PROBABILITY_DIFF`."""
    drop = (reference.top1 - candidate.top1) * 100.0
    if drop > max_drop_points:
        return False, f"top-1 {candidate.top1:.4f} is {drop:.2f} points below FP32 {reference.top1:.4f} (limit {max_drop_points:.2f})"
    reason = f"top-1 within {max_drop_points:.2f} points of FP32 ({-drop:+.2f})"
    if probabilities:
        median, _ = candidate.probability_difference(reference)
        if median > MAX_MEDIAN_PROBABILITY_DIFF:
            limit = MAX_MEDIAN_PROBABILITY_DIFF
            return False, f"median probability difference from FP32 {median:.5f} is above {limit:g} (a quantised output?)"
        reason += f", median probability difference from FP32 {median:.5f}"
    return True, reason
