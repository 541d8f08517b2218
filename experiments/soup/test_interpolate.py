"""``interpolate.py``: the ends of the line between two soups' weights score as their served files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lite_models import lite_export, lite_run, unbalanced_copy

from wastesort import evaluation as ev
from wastesort.data import read_manifest
from wastesort.training.export import export_onnx, load_checkpoint
from wastesort.training.logit_adjust import offsets_for

sys.path.insert(0, str(Path(__file__).resolve().parent))

import interpolate  # noqa: E402


def test_the_interpolation_script_scores_its_ends_as_their_served_files_score(synthetic_root: Path, tmp_path: Path) -> None:
    """``experiments/soup/interpolate.py`` (an analysis script on the soup's own code): at t = 0 and
    t = 1 its val and test top-1 are those of A's adjusted export and of B's run exported and
    adjusted, measured by ONNX Runtime as the release measures them. The data set is unbalanced,
    so the logit adjustment changes answers and leaving it out would show."""

    from wastesort.training.logit_adjust import adjust_onnx

    data = unbalanced_copy(synthetic_root, tmp_path / "data")  # B answers metal; the classes' sizes differ
    export = lite_export(tmp_path / "a", data, seed=0, release_offsets=True)
    run = lite_run(tmp_path / "b", data, seed=5, split_seed=0)
    out = tmp_path / "line.md"
    args = ["--a", str(export), "--b", str(run), "--data", str(data), "--steps", "2", "--out", str(out)]
    assert interpolate.main(args) == 0
    rows = [line.strip("| ").split(" | ") for line in out.read_text().splitlines() if line.startswith(("| 0.", "| 1."))]
    assert [r[0] for r in rows] == ["0.00", "0.50", "1.00"]
    model, contract, _ = load_checkpoint(run / "best.pt")
    splits = read_manifest(run / "manifest.csv", data)
    plain = export_onnx(model, contract, tmp_path / "plain" / "b.onnx")
    adjusted = adjust_onnx(plain, offsets_for(splits["train"], len(contract.labels)), tmp_path / "b.onnx")
    tensors = {split: ev.split_tensors(splits[split], contract) for split in ("val", "test")}
    top1 = {path: [ev.evaluate(path, x, y, contract.labels).top1 for x, y in tensors.values()] for path in (export, plain, adjusted)}
    assert top1[export] != top1[adjusted], "A and B score alike here: the test would not see them swapped"
    assert top1[plain] != top1[adjusted], "the adjustment changes no answer here: the test would not see it left out"
    for row, path in ((rows[0], export), (rows[-1], adjusted)):
        for column, expected, (_, y) in zip((1, 5), top1[path], tensors.values(), strict=True):
            assert float(row[column]) == pytest.approx(expected, abs=1.5 / len(y))
