"""Calibration images for INT8 (ONNX Runtime and TensorRT): real training photos pushed through
exactly the serving preprocessing (``wastesort.preprocess.preprocess_files``, the code the
Triton ``preprocess`` model runs).

The selection is deterministic: the first ``n`` training images in content-hash order,
stratified so that every class is represented in proportion.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.preprocess import preprocess_files


def select_calibration(train: list[Sample], n: int) -> list[Sample]:
    """``n`` training samples, each class in proportion to its share, in a fixed order."""
    if n <= 0 or not train:
        raise ValueError("calibration needs at least one training image")
    by_class: dict[int, list[Sample]] = {}
    for sample in sorted(train, key=lambda s: s.sha256):
        by_class.setdefault(sample.label, []).append(sample)
    quota = {label: max(1, round(n * len(items) / len(train))) for label, items in by_class.items()}
    chosen = [s for label, items in sorted(by_class.items()) for s in items[: quota[label]]]
    return sorted(chosen, key=lambda s: s.sha256)[:n]


def calibration_tensor(samples: list[Sample], contract: PreprocessContract) -> np.ndarray:
    """float32 ``(N, 3, H, W)``: the model inputs the server would build from these files."""
    return preprocess_files([s.path for s in samples], contract, desc="calibration")


def whole_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """``images`` in batches of exactly ``batch_size`` (calibrators stack batches, so they must
    share one shape); the ``len(images) % batch_size`` left over are not used."""
    usable = len(images) - len(images) % batch_size
    if usable == 0:
        raise ValueError(f"{len(images)} calibration images make no whole batch of {batch_size}")
    for i in range(0, usable, batch_size):
        yield np.ascontiguousarray(images[i : i + batch_size])


class ArrayCalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration reader over preprocessed images, in :func:`whole_batches`."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 20) -> None:
        self.input_name, self.images, self.batch_size = input_name, images, batch_size
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = whole_batches(self.images, self.batch_size)


def polygraphy_feed(input_name: str, images: np.ndarray, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The same whole batches as feed dicts, the data loader Polygraphy's ``Calibrator`` takes."""
    for batch in whole_batches(images, batch_size):
        yield {input_name: batch}
