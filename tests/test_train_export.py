"""A short real training run on synthetic data, resume, and the verified ONNX export."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import export as export_cli  # noqa: E402

import train as train_cli  # noqa: E402
from wastesort import evaluation as ev  # noqa: E402
from wastesort.contract import PreprocessContract  # noqa: E402
from wastesort.data import split_seed_of  # noqa: E402
from wastesort.inference import OnnxClassifier  # noqa: E402
from wastesort.labels import LABELS  # noqa: E402
from wastesort.preprocess import preprocess_file  # noqa: E402
from wastesort.training.cli import parse_args  # noqa: E402
from wastesort.training.export import ExportError, load_checkpoint, verify_export  # noqa: E402
from wastesort.training.trainer import load_data  # noqa: E402

SMALL = [
    "--model",
    "simplecnn",
    "--input-size",
    "64",
    "--conv-layers",
    "4",
    "--base-features",
    "24",
    "--kernel-size",
    "3",
    "--dense-units",
    "64",
    "--batch-size",
    "16",
    "--lr",
    "3e-3",
    "--mix-prob",
    "0",
    "--warmup-epochs",
    "1",
    "--seed",
    "0",
]


def _data_root(run: Path) -> Path:
    return Path(json.loads((run / "config.json").read_text())["data"])


@pytest.fixture(scope="module")
def trained_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train_cli.main(["--data", str(synthetic_root), "--out", str(out), "--epochs", "10", *SMALL]) == 0
    return out


@pytest.mark.slow
def test_training_beats_chance_and_writes_every_output(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.6  # chance is 1/6
    assert set(metrics["test"]["per_class"]) == set(LABELS)
    for name in (
        "config.json",
        "manifest.csv",
        "best.pt",
        "last.pt",
        "curves.csv",
        "curves.png",
        "confusion_val.csv",
        "confusion_test.png",
        "predictions_test.csv",
        "predictions_val.csv",
    ):
        assert (trained_run / name).is_file(), name
    rows = (trained_run / "predictions_test.csv").read_text().splitlines()
    assert len(rows) == 1 + metrics["split_sizes"]["test"]


@pytest.mark.slow
def test_resume_continues_where_it_stopped(synthetic_root: Path, tmp_path: Path) -> None:
    args = ["--data", str(synthetic_root), "--out", str(tmp_path), *SMALL, "--input-size", "32", "--conv-layers", "3"]
    assert train_cli.main([*args, "--epochs", "3", "--time-limit-min", "0.0001"]) == 0  # stops after 1 epoch
    assert len((tmp_path / "curves.csv").read_text().splitlines()) == 2  # header + epoch 1
    assert train_cli.main([*args, "--epochs", "3", "--resume"]) == 0
    history = (tmp_path / "curves.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]


def test_split_seed_keeps_the_split_while_the_training_seed_changes(synthetic_root: Path, tmp_path: Path) -> None:
    def split_of(*flags: str) -> dict[str, set[str]]:
        cfg, _ = parse_args(["--data", str(synthetic_root), "--out", str(tmp_path), "--model", "simplecnn", "--input-size", "32", *flags])
        return {k: {s.sha256 for s in v} for k, v in load_data(cfg).splits.items()}

    base = split_of()  # --seed 0 draws the split
    assert split_of("--seed", "3", "--split-seed", "0") == base
    assert split_of("--seed", "3")["test"] != base["test"]  # without --split-seed the seed moves the split
    assert split_seed_of({"seed": 3, "split_seed": 0}) == 0 and split_seed_of({"seed": 3}) == 3  # config.json, old and new


def test_bad_dataset_gives_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from wastesort.synthetic import generate

    root = generate(tmp_path / "d", per_class=3)
    for f in (root / "glass").iterdir():
        f.unlink()
    assert train_cli.main(["--data", str(root), "--out", str(tmp_path / "r"), *SMALL, "--epochs", "1"]) == 2
    assert "glass" in capsys.readouterr().err


def test_export_parity_metadata_and_dynamic_batch(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    assert export_cli.main(["--run", str(trained_run), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["IMAGES"]
    assert [o.name for o in proto.graph.output] == ["LOGITS", "PROBABILITIES"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    contract = PreprocessContract.from_metadata(meta)
    assert contract.labels == LABELS and (contract.height, contract.width) == (64, 64)
    report = json.loads(out.with_suffix(".export.json").read_text())
    assert report["top1_agreement"] == 1.0 and report["max_abs_logit_diff"] <= 1e-3

    clf = OnnxClassifier(out)  # a consumer with nothing but the file
    files = sorted(_data_root(trained_run).rglob("*.jpg"))[:5]
    for n in (1, 5):
        probs = clf.probabilities(np.stack([preprocess_file(str(f), clf.contract) for f in files[:n]]))
        assert probs.shape == (n, 6) and np.allclose(probs.sum(1), 1, atol=1e-5)
    preds = clf.classify_bytes([files[0].read_bytes()])
    assert preds[0].label in LABELS


def test_verification_catches_a_broken_export(trained_run: Path, tmp_path: Path) -> None:
    from onnx import numpy_helper

    out = tmp_path / "m.onnx"
    assert export_cli.main(["--run", str(trained_run), "--out", str(out)]) == 0
    proto = onnx.load(str(out))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))  # perturb the largest weight
    arr = numpy_helper.to_array(init).copy()
    arr += np.random.default_rng(0).normal(0, 0.5, arr.shape).astype(arr.dtype)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(proto, str(out))
    model, contract, _ = load_checkpoint(trained_run / "best.pt")
    files = sorted(_data_root(trained_run).rglob("*.jpg"))[::8]
    images = np.stack([preprocess_file(str(f), contract) for f in files])
    with pytest.raises(ExportError):
        verify_export(out, model, images)


@pytest.mark.slow
def test_release_writes_every_shipped_file_logit_adjusted_and_the_card(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make release`` end to end on a short class-weighted run of imbalanced data, into a
    temporary models folder: every ``models/<net>.*`` file, the logit adjustment (offsets in
    the file, the recorded test top-1 reproduced by the file), the TTA rule, the stale QAT copy
    removed, the card; the repository left alone for a network that is not the default. A
    release that fails at its last step leaves the models folder as it was."""
    import shutil

    import release as release_cli

    from wastesort.shipped import ShippedModel
    from wastesort.training import release as release_lib
    from wastesort.training.logit_adjust import METADATA_KEY, AdjustError

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    for f in sorted((data / "trash").iterdir())[::2]:  # the rare class, as in TrashNet
        f.unlink()
    run = tmp_path / "run"
    assert train_cli.main(["--data", str(data), "--out", str(run), "--epochs", "4", "--balance", "loss", *SMALL]) == 0
    models, card, repository = tmp_path / "models", tmp_path / "MODEL_CARD.md", tmp_path / "repository"
    models.mkdir()
    shipped = ShippedModel("simplecnn", folder=models)
    shipped.qat_onnx.write_bytes(b"fine-tuned from a previous export")
    shipped.qat_record.write_text(json.dumps({"source_sha256": "0" * 64}))

    args = ["--run", str(run), "--models-dir", str(models), "--card", str(card), "--repository", str(repository)]
    assert release_cli.main(args) == 0

    for path in (shipped.onnx, shipped.manifest, shipped.metrics, shipped.export_record, shipped.confusion):
        assert path.is_file(), path
    assert not shipped.qat_onnx.exists() and not shipped.qat_record.exists()
    assert not repository.exists()  # simplecnn is not the default network
    metrics = json.loads(shipped.metrics.read_text())
    assert metrics["release"]["run"] == str(run) and metrics["release"]["lineage"][0]["epochs"] == 4
    offsets = metrics["logit_adjustment"]["offsets"]
    assert offsets["trash"] < 0 < min(v for c, v in offsets.items() if c != "trash")  # the rare class is pulled down
    meta = {p.key: p.value for p in onnx.load(str(shipped.onnx)).metadata_props}
    assert json.loads(meta[METADATA_KEY])["offsets"] == offsets
    assert shipped.tta_onnx.is_file() == metrics["tta"]["kept"] == (metrics["tta"]["val_tta"] > metrics["tta"]["val_plain"])
    contract = PreprocessContract.from_onnx(str(shipped.onnx))
    x, y = ev.split_tensors(shipped.split("test", data), contract)
    assert ev.evaluate(shipped.onnx, x, y, contract.labels).top1 == pytest.approx(metrics["test"]["accuracy"])
    served = metrics["served"]  # the file the committed default ensemble serves, measured as it is served
    assert served["file"] == shipped.served_onnx.name == (shipped.tta_onnx if shipped.serves_tta else shipped.onnx).name
    assert not shipped.serves_tta or metrics["tta"]["kept"]  # the rule may pick TTA only where the release kept it
    assert served["test"]["accuracy"] == pytest.approx(ev.evaluate(shipped.served_onnx, x, y, contract.labels).top1)
    low, high = served["test"]["interval"]["top1"]
    assert low <= served["test"]["accuracy"] <= high
    text = card.read_text()
    assert "--balance loss" in text and f"{metrics['test']['accuracy']:.4f}" in text

    released = {p.name: p.read_bytes() for p in models.iterdir()}

    def refuse(*_args: object) -> dict:
        raise AdjustError("refused for the test")

    monkeypatch.setattr(release_lib, "adjust_shipped", refuse)
    assert release_cli.main([*args, "--card", str(tmp_path / "other_card.md")]) == 1
    assert {p.name: p.read_bytes() for p in models.iterdir()} == released and not (tmp_path / "other_card.md").exists()
