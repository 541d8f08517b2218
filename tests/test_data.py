"""Dataset scanning, deduplication, the stratified split and its manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wastesort.data import (
    DatasetError,
    class_weights,
    read_manifest,
    scan_image_folder,
    stratified_split,
    write_manifest,
)
from wastesort.labels import LABELS


def _hashes(samples) -> set[str]:
    return {s.sha256 for s in samples}


def test_split_is_deterministic_stratified_and_disjoint(synthetic_root: Path) -> None:
    scan = scan_image_folder(synthetic_root)
    assert scan.classes == LABELS
    a = stratified_split(scan.samples, seed=7)
    b = stratified_split(list(reversed(scan.samples)), seed=7)  # input order must not matter
    assert {k: [s.sha256 for s in v] for k, v in a.items()} == {k: [s.sha256 for s in v] for k, v in b.items()}
    c = stratified_split(scan.samples, seed=8)
    assert _hashes(a["test"]) != _hashes(c["test"])
    assert not _hashes(a["train"]) & _hashes(a["val"])
    assert not _hashes(a["train"]) & _hashes(a["test"])
    assert not _hashes(a["val"]) & _hashes(a["test"])
    assert sum(len(v) for v in a.values()) == len(scan.samples) == 240
    for label in range(len(LABELS)):  # 40 per class -> 28/6/6
        assert [sum(s.label == label for s in a[k]) for k in ("train", "val", "test")] == [28, 6, 6]


def test_manifest_round_trip(synthetic_root: Path, tmp_path: Path) -> None:
    scan = scan_image_folder(synthetic_root)
    splits = stratified_split(scan.samples, seed=0)
    write_manifest(tmp_path / "manifest.csv", splits, scan.classes, synthetic_root)
    text = (tmp_path / "manifest.csv").read_text()
    assert str(synthetic_root) not in text  # paths are stored relative to the dataset root
    assert read_manifest(tmp_path / "manifest.csv", synthetic_root) == splits


def test_duplicates_kept_once_and_cross_class_copies_dropped(small_root: Path) -> None:
    first = sorted((small_root / "glass").iterdir())[0]
    shutil.copy(first, small_root / "glass" / "copy_of_first.JPG")  # same class, upper-case suffix
    other = sorted((small_root / "metal").iterdir())[0]
    shutil.copy(other, small_root / "paper" / "ambiguous.jpeg")  # same bytes under two classes
    scan = scan_image_folder(small_root)
    counts = scan.class_counts()
    assert counts["glass"] == 6 and counts["metal"] == 5 and counts["paper"] == 6
    reasons = {p.name: r for p, r in scan.skipped}
    assert "duplicate of" in (reasons.get("copy_of_first.JPG") or reasons[first.name])
    assert "several classes" in reasons["ambiguous.jpeg"]
    assert len({s.sha256 for s in scan.samples}) == len(scan.samples)


def test_corrupt_and_non_image_files_are_reported_and_skipped(small_root: Path) -> None:
    (small_root / "trash" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    good = sorted((small_root / "paper").iterdir())[0].read_bytes()
    (small_root / "paper" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (small_root / "plastic" / "notes.txt").write_text("hello")
    scan = scan_image_folder(small_root)
    skipped = {p.name: r for p, r in scan.skipped}
    assert "unreadable image" in skipped["broken.jpg"]
    assert "unreadable image" in skipped["truncated.jpg"]
    assert "not an image extension" in skipped["notes.txt"]
    assert all(n == 6 for n in scan.class_counts().values())


def test_empty_class_is_a_clear_error(small_root: Path) -> None:
    for f in (small_root / "trash").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="trash.*no usable image"):
        scan_image_folder(small_root)


def test_an_image_outside_the_class_folders_is_listed_not_dropped_unsaid(small_root: Path) -> None:
    stray = small_root / "IMG_0001.jpg"  # a photo nobody sorted yet
    shutil.copy(next((small_root / "glass").iterdir()), stray)
    (small_root / "README.md").write_text("notes")  # not an image: not a photo left out
    scan = scan_image_folder(small_root)
    assert [(path, "outside any class folder" in reason) for path, reason in scan.skipped] == [(stray, True)]


def test_class_of_only_corrupt_files_is_an_error(small_root: Path) -> None:
    for f in (small_root / "metal").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="metal"):
        scan_image_folder(small_root)


def test_missing_root_and_missing_class(tmp_path: Path, small_root: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "flat")
    shutil.rmtree(small_root / "glass")
    with pytest.raises(DatasetError, match="glass"):
        scan_image_folder(small_root, classes=LABELS)


def test_class_weights_favour_the_rare_class(synthetic_root: Path) -> None:
    samples = scan_image_folder(synthetic_root).samples
    rare = [s for s in samples if s.label != 5] + [s for s in samples if s.label == 5][:4]
    w = class_weights(rare, 6)
    assert w[5] == w.max() and w[5] > 5 * w[0]
    assert abs(float(w.mean()) - 1.0) < 1e-6
