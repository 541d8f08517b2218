"""Export a trained checkpoint to ONNX and prove the export is faithful.

ONNX contract:
    input  ``IMAGES``        float32 ``(N, 3, H, W)``, N dynamic (the preprocessing contract)
    output ``LOGITS``        float32 ``(N, C)``
    output ``PROBABILITIES`` float32 ``(N, C)``, softmax of LOGITS
    metadata_props: ``labels`` (JSON list, index order) and ``preprocessing`` (JSON), see
    :class:`wastesort.PreprocessContract`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from wastesort.contract import PreprocessContract
from wastesort.data import Sample, read_manifest
from wastesort.paths import in_repo
from wastesort.preprocess import preprocess_files
from wastesort.shipped import CLASSIFIER_OUTPUTS, IMAGES, LOGITS, ShippedModel, sha256
from wastesort.training.models import SimpleCNNConfig, build_model
from wastesort.variants.tta import flip_averaged

OPSET = 18
#: Upper bound of the dynamic batch axis recorded by torch.export.
MAX_BATCH = 4096
#: Largest |logit(ONNX Runtime) - logit(PyTorch)| accepted for an FP32 export.
LOGIT_ATOL = 1e-3
#: Key of a run's ``config.json`` holding :func:`export_origin` (``--init-from <file>.onnx``).
INIT_EXPORT_KEY = "init_export"
#: Key of a soup run's ``config.json`` holding its ingredients and choice
#: (:mod:`wastesort.training.soup`); an ingredient that is an export keeps its
#: :func:`export_origin` under :data:`INIT_EXPORT_KEY`.
SOUP_KEY = "soup"


def averaged_models(soup: dict) -> int:
    """How many fine-tuned models the soup record ``soup`` averages (each chosen ingredient by
    its own count; records from before the count was kept: its chosen ingredients)."""
    return int(soup.get("models", len(soup["chosen"])))


class ExportError(RuntimeError):
    """The exported model does not reproduce the PyTorch model."""


class WithProbabilities(nn.Module):
    """Wraps a classifier so the graph returns logits and softmax probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        return logits, torch.softmax(logits, dim=1)


class FlipAveraged(nn.Module):
    """Test-time augmentation in PyTorch, the reference the ONNX rewrite
    (:func:`wastesort.variants.tta.flip_averaged`) is verified against: the batch and its
    horizontal mirror go through the classifier in one pass of ``2N`` images, and the two
    softmax outputs are averaged.

    Returns ``log`` of the averaged probabilities as its logits, so that the exported
    ``PROBABILITIES = softmax(LOGITS)`` is exactly the average (the classifier contract holds).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        probs = torch.softmax(self.model(torch.cat([images, torch.flip(images, dims=[3])])), dim=1)
        return torch.log((probs[:n] + probs[n:]) * 0.5)


def load_checkpoint(path: str | Path) -> tuple[nn.Module, PreprocessContract, dict]:
    """``best.pt`` from a run -> (model in eval mode, its contract, the raw checkpoint)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    arch = ckpt["arch"]
    simple = SimpleCNNConfig(**arch["simplecnn"]) if arch.get("simplecnn") else None
    model = build_model(arch["name"], ckpt["num_classes"], simplecnn=simple)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), PreprocessContract.from_metadata(ckpt["contract"]), ckpt


def export_onnx(model: nn.Module, contract: PreprocessContract, out: str | Path, opset: int = OPSET, doc: str = "") -> Path:
    """Write ``out`` (torch.export-based exporter) with a dynamic batch axis, the contract in
    its metadata, checked by ``onnx.checker``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, contract.height, contract.width)
    torch.onnx.export(
        WithProbabilities(model.eval()).eval().float(),
        (example,),
        str(out),
        input_names=[IMAGES],
        output_names=list(CLASSIFIER_OUTPUTS),
        opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},),
        dynamo=True,
        verbose=False,
    )
    proto = onnx.load(str(out))  # also reads any external-data sidecar the exporter wrote
    sidecar = out.with_name(out.name + ".data")
    sidecar.unlink(missing_ok=True)  # the model is saved self-contained below
    del proto.metadata_props[:]
    for key, value in contract.to_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = doc or "wastesort classifier"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))
    return out


def verify_export(onnx_path: str | Path, model: nn.Module, images: np.ndarray, atol: float = LOGIT_ATOL) -> dict:
    """Run the same preprocessed images through PyTorch and ONNX Runtime.

    Args:
        images: float32 ``(N, 3, H, W)``, preprocessed per the contract (real photos).
    Returns:
        ``{"images": N, "max_abs_logit_diff": float, "top1_agreement": float}``.
    Raises:
        ExportError: any top-1 disagreement, or a logit difference above ``atol``.
    """
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([session.run([LOGITS], {IMAGES: images[i : i + 64]})[0] for i in range(0, len(images), 64)])
    with torch.inference_mode():
        ref = np.concatenate([model.eval()(torch.from_numpy(images[i : i + 64])).numpy() for i in range(0, len(images), 64)])
    diff = float(np.abs(ort_logits - ref).max())
    agree = ort_logits.argmax(1) == ref.argmax(1)
    result = {"images": len(images), "max_abs_logit_diff": diff, "top1_agreement": float(agree.mean()), "tolerance": atol}
    if not agree.all():
        raise ExportError(f"ONNX Runtime and PyTorch disagree on top-1 for {int((~agree).sum())} of {len(images)} images")
    if diff > atol:
        raise ExportError(f"max |logit difference| {diff:.2e} exceeds the tolerance {atol:.0e}")
    return result


#: ``--decoder`` choices of ``train/release.py``: the checkpoint's own preprocessing, or the
#: libjpeg-turbo + OpenCV decoder (the contract's defaults for ``interpolation`` and
#: ``jpeg_draft_floor``, the same geometry and normalisation).
DECODERS = ("as-trained", "turbo")


def with_decoder(contract: PreprocessContract, decoder: str) -> PreprocessContract:
    """``contract`` served with ``decoder`` (one of :data:`DECODERS`)."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
    if decoder == "as-trained":
        return contract
    default = PreprocessContract()
    return replace(contract, interpolation=default.interpolation, jpeg_draft_floor=default.jpeg_draft_floor)


def run_splits(run: Path) -> dict[str, list[Sample]]:
    """A run's train/val/test samples: its ``manifest.csv`` under the data root of its ``config.json``."""
    config = json.loads((run / "config.json").read_text())
    return read_manifest(run / "manifest.csv", Path(config["data"]))


def export_splits(path: str | Path, data: Path) -> dict[str, list[Sample]]:
    """The split the export ``path`` was trained on: the ``.manifest.csv`` beside it, under ``data``.

    Raises:
        ValueError: no manifest beside the file, so its split cannot be checked.
    """
    manifest = ShippedModel(Path(path).stem, folder=Path(path).parent).manifest
    if not manifest.is_file():
        raise ValueError(f"{path}: {manifest.name} not found beside it, so its split cannot be checked")
    return read_manifest(manifest, data)


def is_export(path: str | Path) -> bool:
    """Whether ``--init-from path`` names an ONNX export (else: a run's ``best.pt``)."""
    return Path(path).suffix == ".onnx"


def export_origin(path: str | Path) -> dict:
    """What a run started from an export (``--init-from models/<net>.onnx``) records of it, in
    ``config.json`` under :data:`INIT_EXPORT_KEY`, since a later release overwrites the file:
    its path and sha256, the run it was exported from (``.export.json``) and the training stages
    of its release (``.metrics.json``), so the lineage can be followed back."""
    path = Path(path)
    files = ShippedModel(path.stem, folder=path.parent)
    return {
        "path": str(path),
        "sha256": sha256(path),
        "source_run": json.loads(files.export_record.read_text())["source_run"] if files.export_record.is_file() else None,
        "lineage": json.loads(files.metrics.read_text()).get("release", {}).get("lineage", []) if files.metrics.is_file() else [],
    }


def export_origins(config: dict) -> list[dict]:
    """Every :func:`export_origin` record a run's ``config.json`` holds: the export it started
    from, and the exports among a soup's ingredients."""
    ingredients = config.get(SOUP_KEY, {}).get("ingredients", [])
    return [o for o in (config.get(INIT_EXPORT_KEY), *(i.get(INIT_EXPORT_KEY) for i in ingredients)) if o]


def recorded_stages(configs: Iterable[dict]) -> dict[Path, dict]:
    """The training runs the exports named in ``configs`` recorded of their release lineage
    (:func:`export_origin`), by resolved run folder: epochs, minutes, device and, for releases
    made since they were recorded, the run's ``command`` and ``config``."""
    return {anchored(s["run"]): s for c in configs for o in export_origins(c) for s in o.get("lineage", [])}


def anchored(run: str | Path) -> Path:
    """A run folder as a key: resolved, relative paths taken from the checkout's root."""
    return in_repo(run).resolve()


def export_lineage(path: str | Path, origin: dict | None) -> list[tuple[Path, dict]]:
    """The lineage of the export ``path`` as :func:`run_lineage` gives it, from its
    :func:`export_origin` record: its source run's lineage when that run is here, else the lineage
    its release recorded (runs are not committed, so on a fresh clone only the record is). The
    last entry is the source run with its configuration.

    Raises:
        ValueError: the source run is not recorded, or is not here and not recorded in full.
    """
    source = (origin or {}).get("source_run")
    if source is None:
        raise ValueError(f"{path}: its source run is not recorded, so its lineage is unknown")
    if (in_repo(source) / "config.json").is_file():
        return run_lineage(in_repo(source))
    stages = origin.get("lineage", [])
    if not stages or any("config" not in s for s in stages):
        raise ValueError(
            f"{path}: its source run {source} is not here, and its release record does not hold "
            "the configuration of every run of its lineage (released before those were recorded)"
        )
    return [(in_repo(s["run"]), s["config"]) for s in stages]


def run_lineage(run: Path) -> list[tuple[Path, dict]]:
    """``run`` and the runs it was made from, first run first, each with its ``config.json``: the
    run it was initialised from (``--init-from``: a run's ``best.pt``, or an export whose source
    run its :func:`export_origin` record names), followed back; for a soup, the lineages of its
    chosen ingredients in their order (a run shared by two listed once). The first one's
    ``weights`` is where the model's weights began. An export's runs that are not here come from
    its recorded release lineage (:func:`recorded_stages`).

    Raises:
        ValueError: an export in the lineage whose runs are neither here nor recorded.
    """
    config = json.loads((run / "config.json").read_text())
    soup = config.get(SOUP_KEY)
    if soup:
        chosen = [soup["ingredients"][i] for i in soup["chosen"]]
        parents = [
            export_lineage(i["path"], i.get(INIT_EXPORT_KEY)) if is_export(i["path"]) else run_lineage(Path(i["path"])) for i in chosen
        ]
    else:
        parent = config.get("init_from")
        if parent and is_export(parent):
            parents = [export_lineage(parent, config.get(INIT_EXPORT_KEY))]
        else:
            parents = [run_lineage(Path(parent).parent)] if parent else []
    lineage: list[tuple[Path, dict]] = []
    for parent_lineage in parents:
        lineage += [(r, c) for r, c in parent_lineage if r.resolve() not in {q.resolve() for q, _ in lineage}]
    return [*lineage, (run, config)]


def held_out_images(run: Path, limit: int) -> list[Path]:
    """The run's val + test photos (from its manifest), at most ``limit``."""
    splits = run_splits(run)
    return [s.path for s in splits["val"] + splits["test"]][:limit]


def export_run(
    run: Path,
    out: Path,
    paths: list[Path],
    opset: int = OPSET,
    atol: float = LOGIT_ATOL,
    tta: bool = False,
    contract: PreprocessContract | None = None,
    plain: Path | None = None,
) -> dict:
    """Export ``run/best.pt`` to ``out`` (with ``tta``: rewritten by
    :func:`wastesort.variants.tta.flip_averaged` and verified against :class:`FlipAveraged`), verify it on
    ``paths`` (real photos through the serving preprocessing) and write ``<out>.export.json``.
    ``contract``: the one the file carries and is served with (default: the checkpoint's own,
    as trained; see :func:`with_decoder`). ``plain``: with ``tta``, this run's plain export already
    written (rewritten instead of exported again).

    Returns the verification record. Raises:
        ExportError: the export does not reproduce PyTorch (``out`` is removed).
    """
    model, trained, ckpt = load_checkpoint(run / "best.pt")
    contract = contract or trained
    doc = f"{ckpt['arch']['name']} trained in {run}, best epoch {ckpt['epoch']}"
    if tta:  # the one TTA rewrite (also what make build applies to INT8), checked against PyTorch's flip average
        with tempfile.TemporaryDirectory() as tmp:
            flip_averaged(plain or export_onnx(model, contract, Path(tmp) / "plain.onnx", opset, doc=doc), out)
        model = FlipAveraged(model).eval()
    else:
        export_onnx(model, contract, out, opset, doc=doc)
    try:
        result = verify_export(out, model, preprocess_files(paths, contract, "verification images"), atol)
    except ExportError:
        out.unlink(missing_ok=True)
        raise
    record = {"source_run": str(run), "tta": tta, **result}
    out.with_suffix(".export.json").write_text(json.dumps(record, indent=2))
    return record
