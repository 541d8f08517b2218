"""The shipped model's identity, owned here and imported everywhere else.

* :data:`DEFAULT_NET`: the network that ``make serve``, the client, ``make build``,
  ``make perf`` and ``make reliability`` use unless told otherwise.
* The tensor names of every exported classifier and of the served ensemble.
* :class:`ShippedModel`: the committed files of one network under ``models/`` (written by
  ``make release``) and its split, read with the photos checked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from wastesort.data import DatasetError, Sample, read_manifest
from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR, in_repo
from wastesort.triton.default import Candidate, pick

#: The network served by default (``MODEL=...`` / ``--net`` pick another committed one).
DEFAULT_NET = "efficientnet_lite0"
#: The from-scratch alternative kept for comparison.
FROM_SCRATCH_NET = "mobilenet_v3_small"

#: Encoded image bytes (BYTES ``[N, 1]``): the ensemble's and ``preprocess``'s input.
IMAGE_BYTES = "IMAGE_BYTES"
#: float32 ``(N, 3, H, W)`` per the preprocessing contract: every classifier's input.
IMAGES = "IMAGES"
#: float32 ``(N, C)`` logits and their softmax: every classifier's outputs.
LOGITS = "LOGITS"
PROBABILITIES = "PROBABILITIES"
CLASSIFIER_OUTPUTS = (LOGITS, PROBABILITIES)


@dataclass(frozen=True)
class ShippedModel:
    """The committed files of network ``net`` under ``folder`` (default ``models/``); ``make release`` writes them."""

    net: str = DEFAULT_NET
    folder: Path = MODELS_DIR

    def file(self, suffix: str) -> Path:
        return self.folder / f"{self.net}{suffix}"

    @property
    def onnx(self) -> Path:
        """The verified FP32 export (the contract in its metadata)."""
        return self.file(".onnx")

    @property
    def tta_onnx(self) -> Path:
        """The test-time-augmentation export (image and its flip, probabilities averaged)."""
        return self.file(".tta.onnx")

    @property
    def qat_onnx(self) -> Path:
        """FP32 weights fine-tuned for INT8 (``make qat``): what the INT8 settings with
        ``qat_weights`` quantise. Never served in FP32."""
        return self.file(".qat.onnx")

    @property
    def qat_record(self) -> Path:
        """How :attr:`qat_onnx` was made, and from which export (``source_sha256``)."""
        return self.file(".qat.json")

    def qat_problem(self) -> str | None:
        """Why :attr:`qat_onnx` cannot be used (missing, or fine-tuned from another export than
        :attr:`onnx`), or ``None`` when it is current."""
        if not self.qat_onnx.is_file() or not self.qat_record.is_file():
            return f"no {self.qat_onnx.name} with its {self.qat_record.name}"
        if json.loads(self.qat_record.read_text()).get("source_sha256") != sha256(self.onnx):
            return f"{self.qat_onnx.name} was fine-tuned from another export than {self.onnx.name}"
        return None

    @property
    def serves_tta(self) -> bool:
        """Whether the committed default ensemble is the TTA one: the release kept a TTA export
        (:meth:`settle_tta`) and the served-default rule (:mod:`wastesort.triton.default`) picks
        it over the plain export on the val and test figures the release recorded in
        :attr:`metrics` (TTA runs the network twice per photo: the slower of the two)."""
        record = json.loads(self.metrics.read_text()) if self.metrics.is_file() else {}
        figures, sizes = record.get("tta"), record.get("split_sizes", {})
        if not self.tta_onnx.is_file() or not figures:
            return False
        photos = sizes["val"] + sizes["test"]
        plain, tta = (
            Candidate(kind, sum(round(figures[f"{s}_{kind}"] * sizes[s]) for s in ("val", "test")), photos) for kind in ("plain", "tta")
        )
        return pick([plain, tta])[0] is tta

    @property
    def served_onnx(self) -> Path:
        """The FP32 file the committed default ensemble serves: :attr:`tta_onnx` where
        :attr:`serves_tta`, else :attr:`onnx`."""
        return self.tta_onnx if self.serves_tta else self.onnx

    def settle_tta(self, val_plain: float, val_tta: float) -> bool:
        """Keep :attr:`tta_onnx` only if it beats the plain export's top-1 ``val_plain`` on the
        validation split; otherwise remove it and its export record. Returns whether it is kept."""
        kept = val_tta > val_plain
        if not kept:
            self.tta_onnx.unlink(missing_ok=True)
            self.tta_onnx.with_suffix(".export.json").unlink(missing_ok=True)
        return kept

    def drop_stale_qat(self) -> bool:
        """Remove :attr:`qat_onnx` and its record when they were made from another export than
        :attr:`onnx` (``make qat`` makes one for the current export); ``True`` if removed."""
        if not self.qat_onnx.is_file() or not self.qat_problem():
            return False
        self.qat_onnx.unlink()
        self.qat_record.unlink(missing_ok=True)
        return True

    @property
    def manifest(self) -> Path:
        """The train/val/test split the model was trained and measured on."""
        return self.file(".manifest.csv")

    @property
    def metrics(self) -> Path:
        return self.file(".metrics.json")

    @property
    def test_top1(self) -> float:
        """The test-split top-1 the release recorded in :attr:`metrics`."""
        return float(json.loads(self.metrics.read_text())["test"]["accuracy"])

    @property
    def export_record(self) -> Path:
        return self.file(".export.json")

    @property
    def source_run(self) -> Path | None:
        """The training run the ONNX file was exported from (its export record), if recorded;
        the folder may be absent (runs are not committed)."""
        if not self.export_record.is_file():
            return None
        return in_repo(json.loads(self.export_record.read_text())["source_run"])

    @property
    def confusion(self) -> Path:
        return self.file(".confusion_test.png")

    def split(self, name: str, data: Path = DEFAULT_TRASHNET) -> list[Sample]:
        """The photos of split ``name`` (train/val/test) under ``data``.

        Raises:
            DatasetError: the manifest is missing, or photos of the split are not under ``data``.
        """
        if not self.manifest.is_file():
            raise DatasetError(f"{self.manifest} not found: is {self.net} a committed model (make release)?")
        samples = read_manifest(self.manifest, data)[name]
        missing = [s.path for s in samples if not s.path.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} {name} photos of {self.manifest.name} missing under {data} (--data), e.g. {missing[0]}")
        return samples


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
