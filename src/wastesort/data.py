"""ImageFolder datasets: scanning, validation, content-hash deduplication, a deterministic
stratified split, and the split manifest (CSV) that makes every reported number reproducible.

Layout: ``root/<class>/<image>``, one folder per class, files ending in .jpg/.jpeg/.png in any
case. No torch here.
"""

from __future__ import annotations

import csv
import hashlib
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "label", "class", "split", "sha256")


class DatasetError(ValueError):
    """The dataset folder cannot be used as it is; the message names the folder or file."""


@dataclass(frozen=True)
class Sample:
    """One image: absolute ``path``, class index ``label`` into the class list, content hash."""

    path: Path
    label: int
    sha256: str


@dataclass
class ScanResult:
    """What :func:`scan_image_folder` found: the usable samples, the class names (index order)
    and every file it skipped, with the reason."""

    samples: list[Sample]
    classes: tuple[str, ...]
    skipped: list[tuple[Path, str]]

    def class_counts(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}


def _check_image(path: Path) -> str | None:
    """None if PIL can read the whole file, else the reason it cannot."""
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() misses truncation; a real decode does not
            img.draft("RGB", (64, 64))
            img.load()
    except Exception as exc:
        return f"unreadable image: {type(exc).__name__}: {exc}"
    return None


def _class_folders(root: Path) -> list[str]:
    """The sub-folders of ``root`` that name classes, sorted (hidden ones are not classes)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_image_folder(
    root: str | Path, classes: tuple[str, ...] | None = None, verify: bool = True, allow_empty: bool = False
) -> ScanResult:
    """Find every image under ``root/<class>/``.

    Args:
        root: dataset folder.
        classes: expected class names in label order; ``None`` takes the sorted sub-folders.
        verify: decode every file once and skip those PIL cannot read.
        allow_empty: a class left with no usable image is not an error: it has no samples and
            its folder is listed in ``skipped``.

    Files with another extension, unreadable images and images lying in ``root`` itself
    (outside any class folder, so unlabelled) are skipped and listed in ``ScanResult.skipped``
    (never raised). Byte-identical files are kept once; a file found under two different
    classes is dropped from both (its label is ambiguous).

    Raises:
        DatasetError: ``root`` missing, no class folders, a missing expected class, or a
            class left with no usable image (unless ``allow_empty``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    found = _class_folders(root)
    if classes is None:
        classes = tuple(found)
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders (expected {root}/<class>/<image>.jpg)")
    missing = [c for c in classes if c not in found]
    if missing:
        raise DatasetError(f"{root} has no folder for class(es) {missing}; found {found}")
    extra = [c for c in found if c not in classes]
    skipped: list[tuple[Path, str]] = [(root / c, "folder is not one of the model's classes") for c in extra]
    skipped += [
        (path, "image outside any class folder: move it into one")
        for path in sorted(root.iterdir())
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    ]

    by_hash: dict[str, list[tuple[Path, int]]] = {}
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((path, f"not an image extension {sorted(IMAGE_EXTENSIONS)}"))
                continue
            reason = _check_image(path) if verify else None
            if reason:
                skipped.append((path, reason))
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            by_hash.setdefault(digest, []).append((path, label))

    samples: list[Sample] = []
    for digest, hits in by_hash.items():
        labels = {label for _, label in hits}
        if len(labels) > 1:
            skipped.extend((p, f"same bytes appear under several classes {sorted(classes[i] for i in labels)}") for p, _ in hits)
            continue
        skipped.extend((p, f"duplicate of {hits[0][0]}") for p, _ in hits[1:])
        samples.append(Sample(hits[0][0].resolve(), hits[0][1], digest))

    result = ScanResult(sorted(samples, key=lambda s: (s.label, s.sha256)), tuple(classes), skipped)
    empty = [name for name, n in result.class_counts().items() if n == 0]
    if empty and not allow_empty:
        raise DatasetError(f"class folder(s) {[str(root / e) for e in empty]} contain no usable image")
    result.skipped.extend((root / name, "no usable image: this class is left out") for name in empty)
    return result


def report_skipped(skipped: list[tuple[Path, str]], stream=sys.stderr) -> None:
    """Print one line per skipped file: ``skipped <path>: <reason>``."""
    for path, reason in skipped:
        print(f"skipped {path}: {reason}", file=stream)


def split_seed_of(config: Mapping[str, Any]) -> int:
    """The split's seed of a run configuration (a ``TrainConfig``'s fields or its ``config.json``):
    ``split_seed``, else ``seed`` (runs before ``--split-seed`` have no ``split_seed``)."""
    return config["seed"] if config.get("split_seed") is None else config["split_seed"]


def stratified_split(
    samples: list[Sample], fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, list[Sample]]:
    """Deterministic stratified train/val/test split.

    Within each class the samples are ordered by content hash (independent of file names and
    file-system order), shuffled by ``numpy.random.default_rng(seed)``, and cut by
    ``fractions``; every class with at least 3 images gets at least one val and one test image.
    Samples must be deduplicated (as :func:`scan_image_folder` returns them), so no image can
    land in two splits.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, not {fractions}")
    rng = np.random.default_rng(seed)
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    for label in sorted({s.label for s in samples}):
        group = sorted((s for s in samples if s.label == label), key=lambda s: s.sha256)
        order = rng.permutation(len(group))
        n = len(group)
        n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
        if n >= 3:
            n_val, n_test = max(n_val, 1 if fractions[1] else 0), max(n_test, 1 if fractions[2] else 0)
        cuts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        for split, idx in cuts.items():
            out[split].extend(group[i] for i in idx)
    return out


def write_manifest(path: Path, splits: dict[str, list[Sample]], classes: tuple[str, ...], root: Path) -> None:
    """CSV with one row per image: path relative to ``root``, label, class, split, sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        for split in SPLITS:
            for s in splits[split]:
                rel = s.path.relative_to(Path(root).resolve()) if s.path.is_relative_to(Path(root).resolve()) else s.path
                writer.writerow({"path": rel.as_posix(), "label": s.label, "class": classes[s.label], "split": split, "sha256": s.sha256})


def same_split(a: dict[str, list[Sample]], b: dict[str, list[Sample]]) -> bool:
    """Whether two splits (e.g. two manifests) hold the same photos, by content hash, in each of
    train, val and test."""
    return all(sorted(s.sha256 for s in a.get(k, [])) == sorted(s.sha256 for s in b.get(k, [])) for k in SPLITS)


def read_manifest(path: Path, root: Path) -> dict[str, list[Sample]]:
    """Inverse of :func:`write_manifest`; paths are resolved against ``root``."""
    out: dict[str, list[Sample]] = {s: [] for s in SPLITS}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["split"]].append(Sample((Path(root) / row["path"]).resolve(), int(row["label"]), row["sha256"]))
    return out


def class_weights(samples: list[Sample], num_classes: int) -> np.ndarray:
    """Inverse-frequency class weights, normalised to mean 1 (for a weighted loss)."""
    counts = np.bincount([s.label for s in samples], minlength=num_classes).astype(np.float64)
    weights = counts.sum() / np.maximum(counts, 1) / num_classes
    return (weights / weights.mean()).astype(np.float32)


def scan_classes_of(root: str | Path, labels: tuple[str, ...]) -> ScanResult:
    """:func:`scan_image_folder` of a folder holding any subset of a model's ``labels`` as class
    folders (a site may have no trash photos), labelled in the model's order: ``classes`` is
    ``labels`` and each sample's ``label`` indexes it. A class folder with no usable image is a
    class the folder does not show (listed in ``skipped``), as if it were not there.

    Raises:
        DatasetError: a folder that is not one of ``labels`` (the message lists them), or no
            usable image in any of them.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    found = _class_folders(root)
    unknown = [name for name in found if name not in labels]
    if unknown or not found:
        what = f"folder(s) {unknown} are not classes of the model" if unknown else "no class folders"
        raise DatasetError(f"{root}: {what}; use any of: {', '.join(labels)}")
    scan = scan_image_folder(root, tuple(found), allow_empty=True)
    if not scan.samples:
        raise DatasetError(f"{root}: no usable image in any class folder ({', '.join(found)})")
    samples = [Sample(s.path, labels.index(found[s.label]), s.sha256) for s in scan.samples]
    return ScanResult(samples, tuple(labels), scan.skipped)
