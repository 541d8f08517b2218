"""Model soups (``train/soup.py``): folding keeps the function and gives the export's weights, the
average is the mean of every tensor, the greedy recipe keeps only what does not lower val, a soup
of an export and a run is averaged in the folded weights and written as a run that ``make
release`` takes, and ingredients that do not match are refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from lite_models import lite_export, lite_run, random_lite
from onnx import numpy_helper
from torch import nn

from wastesort.data import read_manifest
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.training import pipeline
from wastesort.training.export import export_onnx, load_checkpoint, run_lineage
from wastesort.training.logit_adjust import offsets_for
from wastesort.training.qat import EXPORT_PREFIX, FOLDED_BIAS_SUFFIX, fold_batchnorms, student_from_onnx
from wastesort.training.rebuild import unadjusted_student
from wastesort.training.soup import SoupError, average_weights, greedy_soup, make_soup
from wastesort.training.trainer import contract_for

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

import soup as soup_cli  # noqa: E402


def _images(n: int, side: int = 64) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(7).normal(0.0, 0.6, (n, 3, side, side)).astype(np.float32))


def _logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


@pytest.mark.slow
def test_folding_keeps_the_function_and_gives_the_weights_an_export_computes_with(tmp_path: Path) -> None:
    from wastesort.training.cli import parse_args

    model = random_lite(3, 6)
    folded = fold_batchnorms(model)
    x = _images(4)
    assert np.abs(_logits(folded, x) - _logits(model, x)).max() < 1e-4
    norms = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(float(n.weight.min()) == float(n.weight.max()) == 1.0 and not n.weight.requires_grad for n in norms)
    assert all(float(n.running_mean.abs().max()) == 0.0 for n in norms)
    assert any(float(n.bias.detach().abs().max()) > 0.05 for n in norms)  # the folded biases
    # The exporter folds the same network into the same tensors (what student_from_onnx reads).
    cfg, _ = parse_args(["--data", str(tmp_path), "--out", str(tmp_path / "x"), "--model", DEFAULT_NET, "--input-size", "64"])
    path = export_onnx(model, contract_for(cfg, tuple("abcdef")), tmp_path / "m.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    convs = [(name, m) for name, m in folded.named_modules() if isinstance(m, nn.Conv2d)]
    for (name, conv), norm in zip(convs, norms, strict=True):
        assert np.abs(conv.weight.detach().numpy() - weights[f"{EXPORT_PREFIX}{name}.weight"]).max() < 1e-5, name
        assert np.abs(norm.bias.detach().numpy() - weights[f"{EXPORT_PREFIX}{name}{FOLDED_BIAS_SUFFIX}"].ravel()).max() < 1e-5, name
    assert np.abs(_logits(student_from_onnx(path, DEFAULT_NET), x) - _logits(folded, x)).max() < 1e-4
    with pytest.raises(ValueError, match="BatchNorms"):
        fold_batchnorms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)))


def test_the_average_is_the_mean_of_every_floating_point_tensor() -> None:
    a, b = fold_batchnorms(random_lite(1, 6)), fold_batchnorms(random_lite(2, 6))
    soup, weighted = average_weights([a, b]), average_weights([a, b], [2, 1])
    sa, sb, sw = a.state_dict(), b.state_dict(), weighted.state_dict()
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, (sa[key] + sb[key]) / 2, atol=1e-7), key
            assert torch.allclose(sw[key], (2 * sa[key] + sb[key]) / 3, atol=1e-7), key
    assert float((sa["conv_stem.weight"] - sb["conv_stem.weight"]).abs().max()) > 0.01  # the two really differ
    x = _images(2)
    assert np.abs(_logits(average_weights([a, a]), x) - _logits(a, x)).max() < 1e-5


def test_greedy_ranks_by_own_score_and_keeps_only_what_does_not_lower_it() -> None:
    scores = {
        frozenset("a"): 0.5,
        frozenset("b"): 0.9,
        frozenset("c"): 0.7,
        frozenset("d"): 0.6,
        frozenset("bc"): 0.92,  # higher: kept
        frozenset("bcd"): 0.92,  # level: kept (the paper's rule)
        frozenset("bcda"): 0.80,  # lower: dropped
    }
    chosen, alone, steps = greedy_soup(list("abcd"), lambda xs: scores[frozenset(xs)])
    assert chosen == [1, 2, 3] and alone == [0.5, 0.9, 0.7, 0.6]
    assert [(s["ingredient"], s["score"], s["kept"]) for s in steps] == [(1, 0.9, True), (2, 0.92, True), (3, 0.92, True), (0, 0.8, False)]


@pytest.fixture(scope="module")
def soup_run(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, dict]:
    """A uniform soup of an export (logit-adjusted, the split of seed 0) and a run on that split."""
    folder = tmp_path_factory.mktemp("soup")
    export = lite_export(folder / "export", synthetic_root, seed=0)
    run = lite_run(folder / "run", synthetic_root, seed=5)
    out = folder / "soup"
    metrics = make_soup([export, run], DEFAULT_NET, synthetic_root, out, "uniform", command="python train/soup.py ...")
    return export, run, out, metrics


@pytest.mark.slow
def test_a_soup_averages_the_folded_weights_and_reproduces_its_recorded_figures(soup_run: tuple[Path, Path, Path, dict]) -> None:
    export, run, out, metrics = soup_run
    model, contract, checkpoint = load_checkpoint(out / "best.pt")
    run_model = load_checkpoint(run / "best.pt")[0]
    # The stem, from the export's file and the run's BatchNorm by hand: averaged folded, not raw.
    exported = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(export)).graph.initializer}
    scale = (run_model.bn1.weight / torch.sqrt(run_model.bn1.running_var + run_model.bn1.eps)).reshape(-1, 1, 1, 1)
    run_stem = (run_model.conv_stem.weight * scale).detach().numpy()
    expected = (exported[f"{EXPORT_PREFIX}conv_stem.weight"] + run_stem) / 2
    assert np.abs(model.conv_stem.weight.detach().numpy() - expected).max() < 1e-6
    # Its BatchNorms are re-expanded (ordinary, trainable) and it computes the folded average,
    # the export's logit adjustment removed (the release adds it back).
    assert float(model.bn1.running_var.min()) > 0 and float(model.bn1.running_mean.abs().max()) > 0
    x = _images(4)
    reference = average_weights([unadjusted_student(export, DEFAULT_NET), fold_batchnorms(run_model)])
    assert np.abs(_logits(model, x) - _logits(reference, x)).max() < 1e-4
    # The recorded figures are the checkpoint's, through the serving preprocessing.
    config = json.loads((out / "config.json").read_text())
    splits = read_manifest(out / "manifest.csv", Path(config["data"]))
    x_val, y_val = pipeline.eval_tensor(splits["val"], contract)
    assert metrics["val"]["accuracy"] == pytest.approx(float((_logits(model, x_val).argmax(1) == y_val.numpy()).mean()))
    assert checkpoint["val_acc"] == metrics["val"]["accuracy"] and metrics["epochs_run"] == 0
    # The uniform soup's val score is the one the release will serve: with the logit adjustment.
    offsets = offsets_for(splits["train"], len(contract.labels))
    adjusted = float(((_logits(model, x_val) + offsets).argmax(1) == y_val.numpy()).mean())
    assert metrics["soup"]["steps"][0]["score"] == pytest.approx(adjusted, abs=1.5 / len(y_val))
    assert metrics["soup"]["chosen"] == [0, 1] and [i["path"] for i in metrics["soup"]["ingredients"]] == [str(export), str(run)]
    # The lineage is both ingredients': the export's source run, the run, then the soup.
    source = Path(json.loads(export.with_suffix(".export.json").read_text())["source_run"])
    assert [r for r, _ in run_lineage(out)] == [source, run, out]
    assert config["init_from"] is None and config["balance"] == "loss"


@pytest.mark.slow
def test_release_takes_a_soup_and_its_card_shows_the_averaging(
    soup_run: tuple[Path, Path, Path, dict], tmp_path: Path, synthetic_root: Path
) -> None:
    import release as release_cli

    export, run, out, _ = soup_run
    models, card = tmp_path / "models", tmp_path / "MODEL_CARD.md"
    args = ["--run", str(out), "--models-dir", str(models), "--card", str(card), "--repository", str(tmp_path / "repository")]
    assert release_cli.main(args) == 0
    shipped = ShippedModel(DEFAULT_NET, folder=models)
    metrics = json.loads(shipped.metrics.read_text())
    assert metrics["soup"]["recipe"] == "uniform" and "logit_adjustment" in metrics
    stages = metrics["release"]["lineage"]
    assert [s["run"] for s in stages] == [json.loads(export.with_suffix(".export.json").read_text())["source_run"], str(run), str(out)]
    text = card.read_text()
    assert "## Weight averaging" in text and f"`{export}` as exported from" in text and f"`{run}`" in text
    assert metrics["soup"]["ingredients"][0]["init_export"]["sha256"][:12] in text
    assert "weights of 2 fine-tuned models averaged" in text and "python train/soup.py" in text and f"--out {run}" in text


@pytest.mark.slow
def test_a_released_model_is_an_ingredient_where_its_runs_are_not(synthetic_root: Path, tmp_path: Path) -> None:
    """On a fresh clone only ``models/`` is there (runs are never committed): the release record
    carries each run's command and configuration, so the shipped model can be averaged with a new
    run, released, and its card still gives every command of the lineage."""
    import release as release_cli

    def release(run: Path, folder: Path) -> ShippedModel:
        args = [
            "--run",
            str(run),
            "--models-dir",
            str(folder / "models"),
            "--card",
            str(folder / "CARD.md"),
            "--repository",
            str(folder / "repo"),
        ]
        assert release_cli.main(args) == 0
        return ShippedModel(DEFAULT_NET, folder=folder / "models")

    export = lite_export(tmp_path / "export", synthetic_root, seed=0)
    source = Path(json.loads(export.with_suffix(".export.json").read_text())["source_run"])
    run = lite_run(tmp_path / "run", synthetic_root, seed=5)
    make_soup([export, run], DEFAULT_NET, synthetic_root, tmp_path / "soup", "uniform", command="python train/soup.py first")
    shipped = release(tmp_path / "soup", tmp_path / "first")
    stages = json.loads(shipped.metrics.read_text())["release"]["lineage"]
    assert [s["command"] for s in stages] == [None, (run / "command.txt").read_text().strip(), "python train/soup.py first"]
    assert stages[1]["config"] == json.loads((run / "config.json").read_text())
    for folder in (source, run, tmp_path / "soup"):
        shutil.rmtree(folder)

    new = lite_run(tmp_path / "new", synthetic_root, seed=7)
    metrics = make_soup(
        [shipped.onnx, new], DEFAULT_NET, synthetic_root, tmp_path / "soup2", "uniform", command="python train/soup.py second"
    )
    # The shipped soup weighs the two models it averages: each of the three gets a third.
    assert metrics["soup"]["chosen"] == [0, 1] and metrics["soup"]["models"] == 3
    assert [i["models"] for i in metrics["soup"]["ingredients"]] == [2, 1]
    x = _images(4)
    parts = [unadjusted_student(shipped.onnx, DEFAULT_NET), fold_batchnorms(load_checkpoint(new / "best.pt")[0])]
    reference = average_weights(parts, [2, 1])
    assert np.abs(_logits(load_checkpoint(tmp_path / "soup2" / "best.pt")[0], x) - _logits(reference, x)).max() < 1e-4
    assert [r for r, _ in run_lineage(tmp_path / "soup2")] == [source, run, tmp_path / "soup", new, tmp_path / "soup2"]
    second = release(tmp_path / "soup2", tmp_path / "second")
    assert [s["run"] for s in json.loads(second.metrics.read_text())["release"]["lineage"]] == [
        str(source),
        str(run),
        str(tmp_path / "soup"),
        str(new),
        str(tmp_path / "soup2"),
    ]
    card = (tmp_path / "second" / "CARD.md").read_text()
    assert f"--seed 5 --out {run}" in card and "python train/soup.py first" in card and "python train/soup.py second" in card
    assert "weights of 3 fine-tuned models averaged (3 training runs in all)" in card and "(a soup of 2 models: weight 2)" in card

    # A release record from before the runs' configurations were recorded: a clear refusal.
    old = json.loads(shipped.metrics.read_text())
    old["release"]["lineage"] = [{k: v for k, v in s.items() if k not in ("command", "config")} for s in old["release"]["lineage"]]
    shipped.metrics.write_text(json.dumps(old))
    with pytest.raises(SoupError, match="does not hold the configuration"):
        make_soup([shipped.onnx, new], DEFAULT_NET, synthetic_root, tmp_path / "soup3")


@pytest.mark.slow
def test_ingredients_that_do_not_match_are_refused(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    export = lite_export(tmp_path / "export", synthetic_root, seed=0)
    cases = [
        (lite_run(tmp_path / "split", synthetic_root, seed=1, split_seed=1), "another split"),
        (lite_run(tmp_path / "side", synthetic_root, seed=1, side=96), "takes"),
        (lite_run(tmp_path / "balance", synthetic_root, seed=1, balance="none"), "class balance"),
        (tmp_path, "neither an ONNX export nor a run"),
    ]
    for other, reason in cases:
        with pytest.raises(SoupError, match=reason):
            make_soup([export, other], DEFAULT_NET, synthetic_root, tmp_path / "out")
    with pytest.raises(SoupError, match="at least two"):
        make_soup([export], DEFAULT_NET, synthetic_root, tmp_path / "out")
    with pytest.raises(SoupError, match="EfficientNet-Lite"):
        make_soup([export, export], "mobilenet_v3_small", synthetic_root, tmp_path / "out")
    argv = ["--ingredients", str(export), str(tmp_path / "split"), "--out", str(tmp_path / "out"), "--data", str(synthetic_root)]
    assert soup_cli.main(argv) == 2
    assert "another split" in capsys.readouterr().err and not (tmp_path / "out").exists()
