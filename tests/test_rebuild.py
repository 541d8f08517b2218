"""Continuing training from an export (``--init-from models/<net>.onnx``): the rebuilt network is
the export (in eval mode, and in train mode on the photos its BatchNorms were re-expanded on),
without the logit adjustment; a run starts from it only on the export's own split and input,
and records where it started so the lineage reaches the first run."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lite_models import SOURCE_STAGE, lite_export
from torch import nn

from wastesort.confidence import read as read_confidence
from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.paths import REPO_ROOT
from wastesort.preprocess import preprocess_files
from wastesort.shipped import DEFAULT_NET, LOGITS, ShippedModel
from wastesort.training import card
from wastesort.training.cli import parse_args
from wastesort.training.export import INIT_EXPORT_KEY, run_lineage
from wastesort.training.logit_adjust import recorded_offsets
from wastesort.training.rebuild import trainable_from_onnx
from wastesort.training.release import release_record
from wastesort.training.trainer import Trainer

COMMITTED = ShippedModel(DEFAULT_NET)


def _images(n: int, side: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0.0, 0.6, (n, 3, side, side)).astype(np.float32))


def test_the_rebuild_is_the_export_without_its_adjustment_in_eval_and_in_a_training_batch() -> None:
    """On photos like the training ones (the samples: the typicality leaves them alone) the
    rebuilt network's logits are the file's times its temperature, less its offsets."""
    contract = PreprocessContract.from_onnx(str(COMMITTED.onnx))
    x = torch.from_numpy(preprocess_files(sorted((REPO_ROOT / "samples").rglob("*.jpg"))[:6], contract))
    model = trainable_from_onnx(COMMITTED.onnx, DEFAULT_NET, x, batch_size=4)
    offsets = recorded_offsets(COMMITTED.onnx)
    temperature = read_confidence(COMMITTED.onnx).temperature
    assert np.abs(offsets).max() > 0.1 and abs(temperature - 1) > 0.1  # both undone steps are exercised
    with torch.no_grad():
        evaluated = model(x).numpy()
    reference = OnnxClassifier(COMMITTED.onnx).batched(LOGITS, x.numpy())
    assert np.abs(evaluated + offsets - reference * temperature).max() < 1e-3
    assert all(p.requires_grad for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(float(m.running_var.min()) >= 0.0 for m in norms) and any(float(m.running_mean.abs().max()) > 0.01 for m in norms)
    # In train mode on exactly the photos measured, every batch statistic equals the recorded one.
    training = copy.deepcopy(model).train()
    with torch.no_grad():
        assert np.abs(training(x).numpy() - evaluated).max() < 1e-3


def _trainer(data: Path, out: Path, init: Path, *extra: str) -> Trainer:
    argv = ["--data", str(data), "--out", str(out), "--model", DEFAULT_NET, "--input-size", "64", "--init-from", str(init)]
    return Trainer(parse_args([*argv, "--epochs", "1", "--batch-size", "8", *extra])[0])


@pytest.mark.slow
def test_a_run_continues_from_an_export_of_its_split_and_records_it(synthetic_root: Path, tmp_path: Path) -> None:
    export = lite_export(tmp_path, synthetic_root, seed=0)
    trainer = _trainer(synthetic_root, tmp_path / "run", export)

    x_val = trainer.x_val.numpy()
    with torch.no_grad():
        started = trainer.model.eval()(trainer.x_val).numpy()
    offsets = recorded_offsets(export)
    assert np.abs(started + offsets - OnnxClassifier(export).batched(LOGITS, x_val)).max() < 1e-4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    origin = config[INIT_EXPORT_KEY]
    assert (
        origin["path"] == str(export)
        and len(origin["sha256"]) == 64
        and origin["lineage"] == [{"run": origin["source_run"], **SOURCE_STAGE}]
    )
    lineage = run_lineage(tmp_path / "run")
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"epochs_run": 1, "train_minutes": 0.5, "device": "cpu"}))
    release = release_record(tmp_path / "run", DEFAULT_NET)  # the source run has no metrics.json: its recorded stage stands in
    stages = [{k: v for k, v in s.items() if k not in ("command", "config")} for s in release["lineage"]]
    assert stages == [origin["lineage"][0], {"run": str(tmp_path / "run"), "epochs": 1, "train_minutes": 0.5, "device": "cpu"}]
    assert [s["config"] for s in release["lineage"]] == [c for _, c in lineage]  # so the lineage outlives its runs
    assert release["weights"].startswith("ImageNet")
    assert f"continued from the export `{export}`" in card._init(config) and origin["sha256"][:12] in card._init(config)
    assert [run for run, _ in lineage] == [Path(origin["source_run"]), tmp_path / "run"] and lineage[0][1]["weights"] == "imagenet"
    # Where the source run is gone (runs are not committed), the lineage comes from the record the
    # run kept of the export: refused while it lacks the run's configuration, followed once it has it.
    source = Path(origin["source_run"])
    source_config = json.loads((source / "config.json").read_text())
    shutil.rmtree(source)
    with pytest.raises(ValueError, match="does not hold the configuration"):
        run_lineage(tmp_path / "run")
    config[INIT_EXPORT_KEY]["lineage"][0]["config"] = source_config
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert run_lineage(tmp_path / "run") == [(source, source_config), (tmp_path / "run", config)]


@pytest.mark.slow
def test_an_export_of_another_split_or_input_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    export = lite_export(tmp_path, synthetic_root, seed=1)  # trained on the split of seed 1
    with pytest.raises(ValueError, match="another split"):
        _trainer(synthetic_root, tmp_path / "run", export)
    with pytest.raises(ValueError, match="takes"):
        _trainer(synthetic_root, tmp_path / "run2", export, "--seed", "1", "--input-size", "96")
    export.with_suffix(".manifest.csv").unlink()
    with pytest.raises(ValueError, match="split cannot be checked"):
        _trainer(synthetic_root, tmp_path / "run3", export, "--seed", "1")
