"""Run an exported ONNX classifier with ONNX Runtime, using only its own metadata.

No torch and no project-specific knowledge of the model: input size, resize policy,
normalisation and labels all come from the ONNX ``metadata_props``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from wastesort.contract import PreprocessContract
from wastesort.preprocess import preprocess_bytes
from wastesort.shipped import PROBABILITIES


@dataclass(frozen=True)
class Prediction:
    """Top-1 ``label`` with its softmax ``score``, and every class probability."""

    label: str
    score: float
    probabilities: dict[str, float]


class OnnxClassifier:
    """ONNX Runtime session plus the model's preprocessing contract.

    Args:
        path: ONNX file exported by ``train/export.py``.
        threads: intra-op threads (0: ONNX Runtime's default, one per core).
        spinning: idle intra-op workers spin-wait for the next run (ONNX Runtime's default);
            turn it off when other work shares the cores between runs.
    """

    def __init__(self, path: str | Path, threads: int = 0, spinning: bool = True) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # a chain of convolutions: no parallel branches worth a second pool
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.contract = PreprocessContract.from_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.input_name = self.session.get_inputs()[0].name

    @property
    def labels(self) -> tuple[str, ...]:
        return self.contract.labels

    def run(self, output_names: list[str], images: np.ndarray) -> list[np.ndarray]:
        """The named outputs for one float32 ``(N, 3, H, W)`` batch, in one session run."""
        return self.session.run(output_names, {self.input_name: images})

    def batched(self, output: str, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` preprocessed images -> float32 ``(N, C)`` ``output``
        (``LOGITS`` or ``PROBABILITIES``), run ``batch_size`` images at a time."""
        outs = [self.session.run([output], {self.input_name: images[i : i + batch_size]})[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(outs) if outs else np.zeros((0, len(self.labels)), np.float32)

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """float32 ``(N, 3, H, W)`` preprocessed images -> float32 ``(N, C)`` probabilities."""
        return self.batched(PROBABILITIES, images, batch_size)

    def classify_bytes(self, encoded: list[bytes]) -> list[Prediction]:
        """Encoded images -> one :class:`Prediction` each (raises ``ImageDecodeError``)."""
        probs = self.probabilities(np.stack([preprocess_bytes(b, self.contract) for b in encoded]))
        return [self._prediction(row) for row in probs]

    def _prediction(self, row: np.ndarray) -> Prediction:
        k = int(row.argmax())
        return Prediction(self.labels[k], float(row[k]), {c: float(p) for c, p in zip(self.labels, row, strict=True)})
