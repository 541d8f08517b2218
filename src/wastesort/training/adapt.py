"""Adapt the shipped model to a site from a few dozen labelled photos of its own line
(``make adapt DATA=my_site/ OUT=runs/<name>``).

A model trained on one look (TrashNet's white board) does not know a plant's belt, light or
camera; a few labelled photos of them do most of the work. The site's photos (an ImageFolder
with any subset of the six classes) are split into the site's own train and val; the shipped
network is rebuilt from its ONNX file (:func:`~wastesort.training.rebuild.unadjusted_student`),
its early stages frozen and run once over every photo and its mirror (cached), and its last
stages and head fine-tuned on the site's training photos (their labels, smoothed) mixed with replayed
TrashNet training photos (distilled towards the shipped network's own outputs on them, so that
it does not forget what it knew). The result is exported with the release's
contract and calibrated afresh (:func:`~wastesort.training.calibrate.calibrate_file`: the site's
photos count as typical now), and a report compares the site's val photos and TrashNet's test
photos before and after.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from wastesort.confidence import TARGET_ACCURACY, ece, selective
from wastesort.confidence import read as read_confidence
from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError, Sample, ScanResult, report_skipped, scan_classes_of, stratified_split
from wastesort.evaluation import classification_metrics, split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.labels import LABELS
from wastesort.machine import describe, one_line
from wastesort.shipped import DEFAULT_NET, ShippedModel, sha256
from wastesort.training.calibrate import calibrate_file, typicality_factor
from wastesort.training.export import ExportError, export_onnx, verify_export
from wastesort.training.rebuild import unadjusted_student

#: Softening of the shipped network's outputs the replayed photos are distilled towards.
DISTILL_TEMPERATURE = 2.0
#: The site's photos held out for its own val split (stratified), the rest train.
SITE_VAL_FRACTION = 0.3
#: What ``make adapt`` writes into its ``OUT`` folder, and ``make release RUN=OUT`` promotes.
ADAPTED_ONNX, ADAPT_REPORT = "model.onnx", "report.json"
#: The report's (and, once released, ``metrics.json``'s ``adapted``) TrashNet test top-1 of the network as trained.
TRAINED_TRASHNET_KEY = "trained_trashnet_test"


class AdaptError(ValueError):
    """The site folder cannot be used (unknown class folder, too few photos) or the TrashNet
    photos to replay are not there; the message says what to do. Nothing is written."""


@dataclass(frozen=True)
class AdaptConfig:
    """Fine-tuning settings: the stages from ``first_trained_block`` on (and the head) train,
    the earlier ones stay frozen and are run once; ``replay`` TrashNet photos per site photo."""

    epochs: int = 12
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.01
    first_trained_block: int = 5
    replay: float = 6.0
    seed: int = 0
    target_accuracy: float = TARGET_ACCURACY
    label_smoothing: float = 0.1


def scan_site(site: Path) -> ScanResult:
    """The site's photos labelled in the model's label order (:func:`~wastesort.data.scan_classes_of`),
    and the files it skipped (unreadable, not an image) with the reason: a person sorted each one,
    so none is dropped unsaid. Raises :class:`AdaptError` for a folder that is not one of the six
    classes (listing them)."""
    try:
        return scan_classes_of(site, LABELS)
    except DatasetError as exc:
        raise AdaptError(str(exc)) from exc


def split_site(samples: list[Sample], seed: int = 0) -> dict[str, list[Sample]]:
    """The site's own train and val: each class split ``1 - SITE_VAL_FRACTION`` / the rest."""
    splits = stratified_split(samples, (1.0 - SITE_VAL_FRACTION, SITE_VAL_FRACTION, 0.0), seed)
    if not splits["train"] or not splits["val"]:
        raise AdaptError(f"{len(samples)} site photos are too few to split into train and val")
    return {"train": splits["train"], "val": splits["val"]}


class Halves(nn.Module):
    """The rebuilt network cut in two: ``early`` (frozen, run once) and ``late`` (trained)."""

    def __init__(self, model: nn.Module, first_trained_block: int) -> None:
        super().__init__()
        self.model, self.cut = model, first_trained_block

    def early(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.blocks[: self.cut](m.bn1(m.conv_stem(x)))

    def late(self, h: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.forward_head(m.bn2(m.conv_head(m.blocks[self.cut :](h))))

    def trainable(self) -> list[nn.Parameter]:
        m = self.model
        modules = [*m.blocks[self.cut :], m.conv_head, m.bn2, m.classifier]
        return [p for module in modules for p in module.parameters()]


def trained_trashnet_top1(metrics: dict, before: float) -> float:
    """TrashNet test top-1 of the network as trained, before any site adaptation: ``before``
    (the model being adapted) unless ``metrics`` (its ``metrics.json``) says it was adapted
    already, then the figure its adaptation carried (or, recorded before that key existed,
    measured before it). Forgetting adds up over adaptations of adapted models."""
    adapted = metrics.get("adapted")
    if not adapted:
        return before
    return adapted.get(TRAINED_TRASHNET_KEY, adapted["before"]["trashnet_test"]["accuracy"])


def _early(halves: Halves, x: np.ndarray, batch: int = 32) -> torch.Tensor:
    """The frozen early stages' output for every image, ``(N, C, H, W)``."""
    with torch.inference_mode():
        return torch.cat([halves.early(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)])


def _scores(path: Path, tensors: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Top-1, macro F1 and the selective figures of ``path`` (as served) on each named set."""
    classifier = OnnxClassifier(path)
    confidence = read_confidence(path)
    threshold = confidence.threshold if confidence else 0.0
    out = {}
    for name, (x, y) in tensors.items():
        probabilities = classifier.probabilities(x)
        metrics = classification_metrics(y, probabilities.argmax(1), classifier.labels)
        out[name] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], **selective(probabilities, y, threshold)}
    return out


def adapt_site(site: Path, out: Path, trashnet: Path, net: str = DEFAULT_NET, config: AdaptConfig = AdaptConfig(), log=print) -> dict:
    """Fine-tune the committed ``net`` on ``site``'s photos with TrashNet replay, write
    ``out/model.onnx`` (calibrated, the release's contract) and ``out/report.{json,md}``; returns
    the report. Raises :class:`AdaptError` before writing anything when the inputs are wrong."""
    start = time.perf_counter()
    scan = scan_site(site)
    samples = scan.samples
    report_skipped(scan.skipped)
    model = ShippedModel(net)
    if not trashnet.is_dir():
        raise AdaptError(f"no TrashNet photos at {trashnet} to replay (so the model keeps what it knew): pass --trashnet DIR")
    try:
        replay_pool, trash_val, trash_test = (model.split(s, trashnet) for s in ("train", "val", "test"))
    except DatasetError as exc:
        raise AdaptError(f"the TrashNet photos under {trashnet} do not match {model.manifest.name}: {exc}") from exc
    splits = split_site(samples, config.seed)
    rng = np.random.default_rng(config.seed)
    replay = [replay_pool[i] for i in rng.permutation(len(replay_pool))[: int(config.replay * len(splits["train"]))]]
    contract = PreprocessContract.from_onnx(str(model.onnx))
    log(f"site: {len(splits['train'])} train and {len(splits['val'])} val photos of {sorted({LABELS[s.label] for s in samples})}; "
        f"replaying {len(replay)} TrashNet training photos")  # fmt: skip
    tensors = {
        "site_train": split_tensors(splits["train"], contract, "site train"),
        "site_val": split_tensors(splits["val"], contract, "site val"),
        "replay": split_tensors(replay, contract, "replay"),
        "trashnet_val": split_tensors(trash_val, contract, "TrashNet val"),
        "trashnet_test": split_tensors(trash_test, contract, "TrashNet test"),
    }
    measured = {k: tensors[k] for k in ("site_val", "trashnet_test")}
    before = _scores(model.served_onnx, measured)
    metrics = json.loads(model.metrics.read_text()) if model.metrics.is_file() else {}
    trained = trained_trashnet_top1(metrics, before["trashnet_test"]["accuracy"])

    torch.manual_seed(config.seed)
    halves = Halves(unadjusted_student(model.onnx, net).eval(), config.first_trained_block)
    site_x, site_y = tensors["site_train"]
    replay_x, replay_y = tensors["replay"]
    on_site, replayed = (_early(halves, np.concatenate([x, np.ascontiguousarray(x[..., ::-1])])) for x in (site_x, replay_x))
    site_labels = torch.from_numpy(np.concatenate([site_y, site_y]))  # each photo and its mirror
    with torch.inference_mode():  # what the shipped network says about the replayed photos: kept
        teacher = torch.cat([halves.late(replayed[i : i + 64]) for i in range(0, len(replayed), 64)])
    parameters = halves.trainable()
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * max(1, 2 * (len(site_y) + len(replay_y)) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, config.lr, total_steps=steps, pct_start=0.15)
    half, losses = config.batch_size // 2, []
    generator = torch.Generator().manual_seed(config.seed)
    # eval mode throughout: the rebuilt BatchNorms are the export's folded identities, and the
    # network has no dropout; gradients flow all the same. Each batch: half site photos
    # (cross-entropy on their labels, smoothed: hard labels made the site's wrong answers more
    # confident than any TrashNet photo, so no one threshold served both), half replayed
    # TrashNet photos (distilled towards the shipped network's own outputs, so the classes the
    # site does not show keep their answers).
    for _ in range(steps):
        site_batch = torch.randint(len(on_site), (half,), generator=generator)
        replay_batch = torch.randint(len(replayed), (half,), generator=generator)
        learn = nn.functional.cross_entropy(
            halves.late(on_site[site_batch]), site_labels[site_batch], label_smoothing=config.label_smoothing
        )
        student = nn.functional.log_softmax(halves.late(replayed[replay_batch]) / DISTILL_TEMPERATURE, dim=1)
        target = nn.functional.softmax(teacher[replay_batch] / DISTILL_TEMPERATURE, dim=1)
        keep = nn.functional.kl_div(student, target, reduction="batchmean") * DISTILL_TEMPERATURE**2
        loss = learn + keep
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(halves.model, contract, out / ADAPTED_ONNX, doc=f"{model.onnx.name} adapted to {site}")
    try:
        check = verify_export(onnx_path, halves.model, np.concatenate([tensors["site_val"][0], tensors["trashnet_val"][0][:64]]))
    except ExportError as exc:
        raise AdaptError(f"the adapted export does not reproduce PyTorch: {exc}") from exc
    export_record = {"source_run": str(out), "tta": False, "adapted_from": model.onnx.name, **check}
    onnx_path.with_suffix(".export.json").write_text(json.dumps(export_record, indent=2) + "\n")
    # the site's photos count as typical from now on; the temperature, the typicality's scale and
    # the threshold come from the site's val photos and TrashNet's together (TrashNet's alone
    # chose a threshold that answered a fifth of the simulated site's photos wrongly)
    calibration_train = np.concatenate([tensors["site_train"][0], tensors["replay"][0]])
    val_x = np.concatenate([tensors["site_val"][0], tensors["trashnet_val"][0]])
    val_y = np.concatenate([tensors["site_val"][1], tensors["trashnet_val"][1]])
    test_x, test_y = tensors["trashnet_test"]
    uncalibrated_test = OnnxClassifier(onnx_path).probabilities(test_x)
    confidence, calibration = calibrate_file(onnx_path, calibration_train, val_x, val_y, config.target_accuracy)
    after = _scores(onnx_path, measured)
    test = OnnxClassifier(onnx_path).probabilities(test_x)
    test_figures = {"ece_before": ece(uncalibrated_test, test_y), "ece_after": ece(test, test_y)} | selective(
        test, test_y, confidence.threshold
    )
    beyond = {name: float((typicality_factor(onnx_path, x) > 1.0).mean()) for name, x in (("val", val_x), ("test", test_x))}
    release_confidence = {  # metrics.json's "confidence" once released (as calibrate_shipped records it)
        "temperature": round(confidence.temperature, 6),
        "typicality_gate": round(confidence.typicality_gate, 4) if confidence.typicality_gate is not None else None,
        "target_accuracy": config.target_accuracy,
        "fitted_on": "the site's val photos with TrashNet's val (temperature, threshold); "
        "the site's and the replayed training photos (typicality)",
        "beyond_gate": beyond if confidence.typicality_gate is not None else None,
        "files": {"plain": {"file": f"{net}.onnx", "threshold": round(confidence.threshold, 6), "val": calibration, "test": test_figures}},
    }
    report = {
        "site": str(site),
        "net": net,
        "source_sha256": sha256(model.onnx),
        "trashnet": str(trashnet),
        "classes": sorted({LABELS[s.label] for s in samples}),
        "photos": {"site_train": len(splits["train"]), "site_val": len(splits["val"]), "replay": len(replay)},
        "skipped": [[str(path), reason] for path, reason in scan.skipped],
        "config": asdict(config),
        "before": {"file": model.served_onnx.name, **before},
        TRAINED_TRASHNET_KEY: trained,
        "after": {"file": onnx_path.name, **after},
        "calibration": {"temperature": confidence.temperature, "threshold": confidence.threshold, "val": calibration},
        "confidence": release_confidence,
        "first_last_loss": [round(losses[0], 4), round(losses[-1], 4)],
        "seconds": round(time.perf_counter() - start, 1),
        "machine": one_line(describe()),
    }
    (out / ADAPT_REPORT).write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    return report


#: Below this share of the site's val photos answered, the report warns that the adapted file is of little use yet.
FEW_ANSWERED = 0.5


def _few_answered(report: dict) -> list[str]:
    """The warning for a threshold few of the site's val photos pass: the file is safe but sends
    most of the site's photos to a person. The site's own share, not that of the val photos the
    threshold was chosen on: TrashNet's val photos are most of those, and pass it easily."""
    coverage = report["after"]["site_val"]["coverage"]
    if coverage >= FEW_ANSWERED:
        return []
    target = report["config"]["target_accuracy"]
    return [
        f"**Only {coverage:.1%} of the site's val photos reach the threshold ({target:.0%} right among the answered): the "
        "adapted file answers *unsure* for most of the site's photos.** Label more of them (above all of the classes it "
        "confuses) and adapt again.",
        "",
    ]


#: TrashNet test top-1 an adaptation may lose before the report warns that it forgets.
FORGETTING = 0.015


def _forgetting(report: dict) -> list[str]:
    """The warning for an adapted file that lost more of TrashNet's test photos than
    :data:`FORGETTING` since the network as trained (over this adaptation, and any before it):
    what it knew goes first for the classes the site does not show."""
    before, after = (report[when]["trashnet_test"]["accuracy"] for when in ("before", "after"))
    trained = report.get(TRAINED_TRASHNET_KEY, before)
    if trained - after <= FORGETTING:
        return []
    if trained == before:
        figures, start = f"({before:.4f} → {after:.4f})", ""
    else:  # an adapted file adapted again
        figures = f"since the network as trained ({trained:.4f} → {after:.4f}; this adaptation alone: {before:.4f} → {after:.4f})"
        start = ", from the network as trained (the `models/` of before the first adaptation) with all the site's photos"
    replay = report["config"]["replay"]
    return [
        f"**TrashNet's test top-1 fell by {100 * (trained - after):.1f} points {figures}, more than {100 * FORGETTING:g}:** "
        "the adapted file forgets part of what it knew, the classes the site does not show first. Adapt again replaying "
        f'more TrashNet photos per site photo (`--replay`, now {replay:g}: `ADAPT_ARGS="--replay {replay * 1.5:g}"`){start}.',
        "",
    ]


def _skipped(report: dict) -> list[str]:
    """The site's files that were not used, each with the reason, so a person can fix or re-sort them."""
    skipped = report.get("skipped", [])
    if not skipped:
        return []
    return [f"**{len(skipped)} file(s) of the site were skipped** (fix or remove them and adapt again):", "",
            *(f"- `{path}`: {reason}" for path, reason in skipped), ""]  # fmt: skip


def report_markdown(report: dict) -> str:
    """The report's tables: the site's val photos and TrashNet's test photos, before and after."""
    rows = []
    for name, title in (("site_val", "site val"), ("trashnet_test", "TrashNet test")):
        for when in ("before", "after"):
            m = report[when][name]
            rows.append(
                f"| {title} | {when} (`{report[when]['file']}`) | {m['accuracy']:.4f} | {m['coverage']:.1%} | "
                f"{m['accuracy_answered']:.4f} | {m['answered_wrong']:.1%} |"
            )
    return "\n".join(
        [
            f"# Adapted to `{report['site']}`",
            "",
            f"{report['photos']['site_train']} site training photos of {', '.join(report['classes'])} with "
            f"{report['photos']['replay']} replayed TrashNet training photos, {report['config']['epochs']} epochs of the stages "
            f"from block {report['config']['first_trained_block']} on; {report['seconds']:.0f} s on {report['machine']}. "
            f"Calibrated afresh: temperature {report['calibration']['temperature']:.3f}, unsure below "
            f"{report['calibration']['threshold']:.3f}.",
            "",
            *_few_answered(report),
            *_forgetting(report),
            *_skipped(report),
            "| photos | model | top-1 | answered | right among answered | answered wrongly |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
