"""Weight averaging of fine-tuned EfficientNet-Lite models: the greedy "model soup" of Wortsman
et al. (ICML 2022). Models fine-tuned from the same ImageNet weights average into one network,
often better than each, at the inference cost of one.

Ingredients are runs (``best.pt``) or exports (``.onnx``) of one Lite network with the same
classes, contract, split and class balance (anything else is a :class:`SoupError`). Each becomes
its folded network (:func:`~wastesort.training.qat.student_from_onnx`), so runs and exports
average in the weights an export computes with; ranked by val top-1 through the serving
preprocessing (with the release's logit adjustment), each next one is kept if it does not lower
val top-1. A soup ingredient weighs as many models as it averages (:func:`averaged_models`). The
result is a run folder that ``make release RUN=...`` takes like any other.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.data import Sample, read_manifest, same_split, write_manifest
from wastesort.training import evaluate, pipeline
from wastesort.training.export import (
    INIT_EXPORT_KEY,
    SOUP_KEY,
    averaged_models,
    export_lineage,
    export_origin,
    export_splits,
    is_export,
    load_checkpoint,
)
from wastesort.training.lite import LITE_NETS
from wastesort.training.logit_adjust import BALANCE, offsets_for, recorded
from wastesort.training.models import count_parameters, describe
from wastesort.training.qat import fold_batchnorms
from wastesort.training.rebuild import reexpand_batchnorms, statistics_sample, unadjusted_student

#: ``--recipe`` choices: the paper's greedy soup, or the plain average of every ingredient.
RECIPES = ("greedy", "uniform")

T = TypeVar("T")


class SoupError(ValueError):
    """The ingredients cannot be averaged: another network, classes, preprocessing, split or
    class balance, or a file that is not a run or an export."""


@dataclass
class Ingredient:
    """One model to average: its folded network (eval mode, no logit adjustment), what it takes,
    the split it was trained on, its class balance, its training configuration, and the record
    ``config.json`` keeps of it."""

    path: Path
    model: nn.Module
    contract: PreprocessContract
    splits: dict[str, list[Sample]]
    balance: str | None
    config: dict
    record: dict

    @property
    def models(self) -> int:
        """How many fine-tuned models its weights average: a soup's count, else 1."""
        soup = self.config.get(SOUP_KEY)
        return averaged_models(soup) if soup else 1

    def release_offsets(self) -> np.ndarray:
        """float32 ``(C,)``: the logit adjustment a release adds to its network (the class-weighted
        loss's offsets for its training split), zeros when it was trained without that loss."""
        classes = len(self.contract.labels)
        return offsets_for(self.splits["train"], classes) if self.balance == BALANCE else np.zeros(classes, np.float32)


def load_ingredient(path: Path, net: str, data: Path) -> Ingredient:
    """A run folder (its ``best.pt``) or an export of ``net`` as an :class:`Ingredient`; the
    manifests are read under ``data``. Raises :class:`SoupError`."""
    if net not in LITE_NETS:
        raise SoupError(f"soups average EfficientNet-Lite networks ({', '.join(LITE_NETS)}), not {net!r}")
    try:
        if is_export(path):
            origin = export_origin(path)
            _, config = export_lineage(path, origin)[-1]  # its source run's, here or as its release recorded it
            return Ingredient(
                path=path,
                model=unadjusted_student(path, net),
                contract=PreprocessContract.from_onnx(str(path)),
                splits=export_splits(path, data),
                balance=BALANCE if recorded(path) else None,
                config=config,
                record={"path": str(path), INIT_EXPORT_KEY: origin},
            )
        if not (path / "best.pt").is_file():
            raise SoupError(f"{path} is neither an ONNX export nor a run folder with best.pt")
        model, contract, checkpoint = load_checkpoint(path / "best.pt")
        if checkpoint["arch"]["name"] != net:
            raise SoupError(f"{path} is a {checkpoint['arch']['name']}, not {net}")
        config = json.loads((path / "config.json").read_text())
        return Ingredient(
            path=path,
            model=fold_batchnorms(model),
            contract=contract,
            splits=read_manifest(path / "manifest.csv", data),
            balance=config.get("balance"),
            config=config,
            record={"path": str(path)},
        )
    except SoupError:
        raise
    except ValueError as exc:  # not an export of net, no manifest beside it, ...
        raise SoupError(str(exc)) from exc


def check_compatible(ingredients: Sequence[Ingredient]) -> None:
    """Raise :class:`SoupError` unless every ingredient matches the first one's contract (input,
    normalisation, decoder, labels), split and class balance."""
    first = ingredients[0]
    for other in ingredients[1:]:
        if other.contract != first.contract:
            raise SoupError(f"{other.path} takes {other.contract}, {first.path} takes {first.contract}")
        if not same_split(other.splits, first.splits):
            raise SoupError(f"{other.path} was trained on another split than {first.path}")
        if other.balance != first.balance:
            raise SoupError(f"{other.path} was trained with class balance {other.balance!r}, {first.path} with {first.balance!r}")


def average_weights(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """A copy of ``models[0]`` whose every floating-point parameter and buffer is the mean of the
    models' weighted by ``weights`` (default: equal; accumulated in float64); integer buffers
    are the first model's."""
    states = [m.state_dict() for m in models]
    w = torch.tensor([1.0] * len(models) if weights is None else list(weights), dtype=torch.float64)
    w = w / w.sum()
    soup = copy.deepcopy(models[0])

    def mean(key: str) -> torch.Tensor:
        return torch.tensordot(w, torch.stack([s[key].double() for s in states]), dims=1)

    averaged = {key: mean(key).to(value.dtype) if value.is_floating_point() else value for key, value in states[0].items()}
    soup.load_state_dict(averaged)
    return soup.eval()


def greedy_soup(ingredients: Sequence[T], score: Callable[[list[T]], float]) -> tuple[list[int], list[float], list[dict]]:
    """The greedy recipe over any ingredients: each one scored alone, ranked (best first, ties in
    the given order), then each next one kept if ``score`` of the chosen ones with it is not lower.

    Returns:
        the chosen indices in the order they were added, each ingredient's own score, and the
        steps (``{"ingredient": i, "score": s, "kept": bool}``, the first one's score its own).
    """
    alone = [score([x]) for x in ingredients]
    order = sorted(range(len(ingredients)), key=lambda i: -alone[i])
    chosen, best = [order[0]], alone[order[0]]
    steps = [{"ingredient": order[0], "score": best, "kept": True}]
    for i in order[1:]:
        value = score([ingredients[j] for j in [*chosen, i]])
        kept = value >= best
        if kept:
            chosen, best = [*chosen, i], value
        steps.append({"ingredient": i, "score": value, "kept": kept})
    return chosen, alone, steps


def _val_scorer(x: torch.Tensor, y: np.ndarray, offsets: np.ndarray) -> Callable[[list[Ingredient]], float]:
    """Val top-1 of the average of some ingredients' folded networks (each weighted by the models
    it averages), ``offsets`` added to the logits."""

    def score(ingredients: list[Ingredient]) -> float:
        logits = evaluate.predict(_average(ingredients), x) + offsets
        return float((logits.argmax(1) == y).mean())

    return score


def _average(ingredients: Sequence[Ingredient]) -> nn.Module:
    return average_weights([i.model for i in ingredients], [i.models for i in ingredients])


def make_soup(paths: Sequence[Path], net: str, data: Path, out: Path, recipe: str = RECIPES[0], command: str = "") -> dict:
    """Average the ingredients ``paths`` (runs or exports of ``net``, manifests under ``data``)
    by ``recipe`` and write the soup as a run folder ``out``. Returns its ``metrics.json``.

    Raises:
        SoupError: fewer than two ingredients, an unknown recipe, or ingredients that do not match.
    """
    if recipe not in RECIPES:
        raise SoupError(f"recipe must be one of {RECIPES}, not {recipe!r}")
    if len(paths) < 2:
        raise SoupError("a soup needs at least two ingredients")
    started = time.perf_counter()
    ingredients = [load_ingredient(Path(p), net, data) for p in paths]
    check_compatible(ingredients)
    first = ingredients[0]
    splits = first.splits
    x_val, y_val = pipeline.eval_tensor(splits["val"], first.contract, "val images")
    score = _val_scorer(x_val, y_val.numpy(), first.release_offsets())
    if recipe == "greedy":
        chosen, alone, steps = greedy_soup(ingredients, score)
    else:
        alone = [score([i]) for i in ingredients]
        chosen, steps = list(range(len(ingredients))), [{"ingredient": None, "score": score(ingredients), "kept": True}]
    x_stats, _ = pipeline.eval_tensor(statistics_sample(splits["train"]), first.contract, "BatchNorm statistics images")
    soup = reexpand_batchnorms(_average([ingredients[i] for i in chosen]), x_stats)
    lead = ingredients[chosen[0]]
    record = {
        "recipe": recipe,
        "scored_on": "val top-1, serving preprocessing" + (", with the release's logit adjustment" if first.balance == BALANCE else ""),
        "ingredients": [{**i.record, "val": a, "models": i.models} for i, a in zip(ingredients, alone, strict=True)],
        "chosen": chosen,
        "models": sum(ingredients[i].models for i in chosen),
        "steps": steps,
        "bn_statistics_images": len(x_stats),
    }
    config = {**lead.config, "data": str(data), "init_from": None, "out": str(out), SOUP_KEY: record}
    config.pop(INIT_EXPORT_KEY, None)
    return _write_run(out, soup, first, splits, {"val": (x_val, y_val)}, config, started, command)


def _write_run(
    out: Path,
    soup: nn.Module,
    first: Ingredient,
    splits: dict[str, list[Sample]],
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    config: dict,
    started: float,
    command: str,
) -> dict:
    """Write the soup's run folder as the trainer writes one (figures as trained, without the
    logit adjustment the release adds); ``tensors`` holds splits already preprocessed."""
    out.mkdir(parents=True, exist_ok=True)
    classes, net = first.contract.labels, config["model"]
    metrics: dict = {
        "model": net,
        "parameters": count_parameters(soup, trainable_only=False),
        "best_epoch": None,
        "epochs_run": 0,
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "classes": list(classes),
        "split_sizes": {k: len(v) for k, v in splits.items()},
    }
    for split in ("val", "test"):
        x, y = tensors[split] if split in tensors else pipeline.eval_tensor(splits[split], first.contract, f"{split} images")
        logits = evaluate.predict(soup, x)
        m = metrics[split] = ev.classification_metrics(y.numpy(), logits.argmax(1), classes)
        title = f"{net} soup {split}: top-1 {m['accuracy']:.3f}"
        evaluate.write_confusion(m["confusion_matrix"], classes, out / f"confusion_{split}", title)
        evaluate.write_predictions(out / f"predictions_{split}.csv", [str(s.path) for s in splits[split]], y.numpy(), logits, classes)
    checkpoint = {
        "arch": describe(net, None),
        "num_classes": len(classes),
        "state_dict": soup.state_dict(),
        "contract": first.contract.to_metadata(),
        "epoch": 0,
        "val_acc": metrics["val"]["accuracy"],
    }
    torch.save(checkpoint, out / "best.pt")
    write_manifest(out / "manifest.csv", splits, classes, Path(config["data"]))
    metrics["train_minutes"] = round((time.perf_counter() - started) / 60, 2)
    metrics[SOUP_KEY] = config[SOUP_KEY]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if command:
        (out / "command.txt").write_text(command + "\n")
    return metrics
