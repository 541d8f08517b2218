"""``measure.py``: the served side scores as the served file does, and
BatchNorm re-estimation measures what it says."""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from lite_models import lite_export, unbalanced_copy
from torch import nn

from wastesort import evaluation as ev
from wastesort.shipped import DEFAULT_NET
from wastesort.training import pipeline
from wastesort.training.rebuild import statistics_sample
from wastesort.training.soup import load_ingredient

sys.path.insert(0, str(Path(__file__).resolve().parent))

import measure  # noqa: E402


def test_the_served_side_scores_as_onnx_runtime_scores_the_export(synthetic_root: Path, tmp_path: Path) -> None:
    """The row of the served side reproduces ONNX Runtime's val and test top-1 on the committed
    (logit-adjusted) file, another side gives other answers, and every row the docstring names is
    written, the re-estimated ones included."""
    data = unbalanced_copy(synthetic_root, tmp_path / "data")
    export = lite_export(tmp_path / "a", data, seed=0, release_offsets=True)
    out = tmp_path / "table.md"
    argv = ["--model", str(export), "--data", str(data), "--sides", "64", "80", "--recalibrate", "--recalibration-photos", "40"]
    assert measure.main([*argv, "--out", str(out)]) == 0
    lines = [line.strip("| ").split(" | ") for line in out.read_text().splitlines() if line.startswith("| ")]
    rows = {r[0]: r[1:] for r in lines[1:]}
    assert list(rows) == [
        "64 px (served)",
        "64 px + mirror",
        "80 px",
        "80 px + mirror",
        "mean over 64, 80 px",
        "mean over 64, 80 px + mirrors",
        "64 px, BatchNorms re-estimated at 64 px",
        "80 px, BatchNorms re-estimated at 80 px",
    ]
    ingredient = load_ingredient(export, DEFAULT_NET, data)
    top1 = [
        ev.evaluate(export, *ev.split_tensors(ingredient.splits[s], ingredient.contract), ingredient.contract.labels).top1
        for s in ("val", "test")
    ]
    served = rows["64 px (served)"]
    assert [float(served[0].split()[0]), float(served[3].split()[0])] == [round(t, 4) for t in top1]
    assert rows["80 px"] != served, "another side gave the same answers: the side is not applied"


def test_batchnorm_re_estimation_sets_each_statistic_from_the_photos_and_keeps_the_weights(synthetic_root: Path, tmp_path: Path) -> None:
    """The stem's BatchNorm ends with the mean and variance of its input over the photos
    (cumulative average of equal batches), the convolution weights are those of the export, and
    the ingredient's own network is left as it was."""
    export = lite_export(tmp_path / "a", synthetic_root, seed=3)
    ingredient = load_ingredient(export, DEFAULT_NET, synthetic_root)
    before = copy.deepcopy(ingredient.model.state_dict())
    contract = ingredient.contract
    statistics = pipeline.eval_tensor(statistics_sample(ingredient.splits["train"]), contract)[0]
    photos = pipeline.eval_tensor(ingredient.splits["train"][:64], replace(contract, height=80, width=80))[0]
    model = measure.recalibrated(ingredient, photos, statistics)
    assert not model.training
    with torch.no_grad():
        stem = ingredient.model.conv_stem(photos).double()
    stem_norm = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.allclose(stem_norm.running_mean.double(), stem.mean(dim=(0, 2, 3)), atol=1e-4)
    step = measure.RECALIBRATION_BATCH
    batch_vars = [stem[i : i + step].var(dim=(0, 2, 3)) for i in range(0, 64, step)]  # unbiased, as BatchNorm keeps it
    assert torch.allclose(stem_norm.running_var.double(), torch.stack(batch_vars).mean(0), rtol=1e-3)
    assert torch.equal(model.conv_stem.weight, ingredient.model.conv_stem.weight)
    after = ingredient.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not np.allclose(stem_norm.running_mean.numpy(), 0.0)
