"""MODEL_CARD.md for a shipped model: every number in the card is read from the run's files
(config.json, command.txt), the committed ``models/<net>.*`` files that ``make release`` wrote
(metrics with the TTA and release records, manifest, export record) and the ONNX file; nothing
is typed in. :func:`wastesort.training.release.publish` and ``train/model_card.py`` call
:func:`write_card`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx

from wastesort.contract import PreprocessContract
from wastesort.data import SPLITS, read_manifest, split_seed_of
from wastesort.evaluation import CONFIDENCE
from wastesort.paths import shown
from wastesort.shipped import sha256
from wastesort.training.export import INIT_EXPORT_KEY, SOUP_KEY, averaged_models, run_lineage


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def confused_pairs(matrix: list[list[int]], classes: list[str], top: int = 3) -> list[str]:
    """The ``top`` largest off-diagonal cells as 'true -> predicted (n)'."""
    cells = [(matrix[i][j], classes[i], classes[j]) for i in range(len(classes)) for j in range(len(classes)) if i != j]
    return [f"{t} -> {p} ({n})" for n, t, p in sorted(cells, reverse=True)[:top] if n > 0]


def _commands(run: Path, release: dict) -> str:
    """The training commands of the run and of the runs it was made from, first run first: as the
    release record keeps them (each run's ``command.txt``, else what its export recorded), or for
    a record from before commands were kept, each run's ``command.txt``."""
    stages = release.get("lineage")
    if stages and all("command" in s for s in stages):
        return "\n".join(s["command"] or "(not recorded)" for s in stages)
    return "\n".join(
        (r / "command.txt").read_text().strip() if (r / "command.txt").exists() else "(not recorded)" for r, _ in run_lineage(run)
    )


def _scenes(config: dict) -> str:
    share = config.get("scene", 0.0)
    return f" ({share:.0%} of them composed as scenes on a floor)" if share else ""


def _init(config: dict) -> str:
    origin = config.get(INIT_EXPORT_KEY)
    if origin:  # the file has been replaced since: name what it was
        return f"; continued from the export `{origin['path']}` of `{origin['source_run']}` (sha256 {origin['sha256'][:12]}…)"
    return f"; continued from `{config['init_from']}`" if config.get("init_from") else ""


def lineage_of(run: Path, release: dict) -> list[tuple[Path, dict]]:
    """The runs the model was made from, first run first, each with its configuration: as the
    release record keeps them where it keeps every configuration (so the card of a committed model
    is rebuilt without its runs), else followed back from ``run``'s files
    (:func:`~wastesort.training.export.run_lineage`)."""
    stages = release.get("lineage")
    if stages and all("config" in s for s in stages):
        return [(Path(s["run"]), s["config"]) for s in stages]
    return run_lineage(run)


def _origin(run: Path, release: dict) -> str:
    """Where the weights began: the first run of the lineage (``--init-from`` followed back)."""
    lineage = lineage_of(run, release)
    first = lineage[0][1]
    if first.get("weights") != "imagenet":
        return ", trained **from scratch** (no pretrained weights)"
    stages = f"two-stage fine-tuning ({first.get('freeze_epochs', 0)} head-only epochs, then the whole network)"
    soup = lineage[-1][1].get(SOUP_KEY)
    if soup:
        runs = sum(SOUP_KEY not in c for _, c in lineage)
        then = f", then the weights of {averaged_models(soup)} fine-tuned models averaged ({runs} training runs in all)"
    else:
        then = f", then {len(lineage) - 1} continued run(s)" if len(lineage) > 1 else ""
    return f", **ImageNet-pretrained**: {release.get('weights', 'ImageNet weights')}; {stages}{then}"


def _training(metrics: dict, release: dict) -> str:
    """Epochs and minutes of every run of the lineage (the release record), else of this run."""
    stages = release.get("lineage") or [
        {"epochs": metrics["epochs_run"], "train_minutes": metrics["train_minutes"], "device": metrics["device"]}
    ]
    runs = " + ".join(f"{s['epochs']} epochs" for s in stages if s["epochs"])  # a soup's own stage trains nothing
    minutes = sum(s["train_minutes"] for s in stages)
    devices = "/".join(sorted({s["device"].upper() for s in stages}))
    where = f"{metrics['torch_threads']} threads{', ' + release['machine'] if release else ''}"
    last = "the weights then averaged" if metrics.get(SOUP_KEY) else f"best of the last at epoch {metrics['best_epoch']}"
    return f"{runs} ({last}), {minutes:.0f} min in all on {devices} ({where})"


def _ingredient(record: dict) -> str:
    """A soup ingredient as the card names it: a run, or an export with the run it came from and
    its sha256 (a later release overwrites the file; git history keeps it)."""
    origin, models = record.get(INIT_EXPORT_KEY), record.get("models", 1)
    weight = f" (a soup of {models} models: weight {models})" if models > 1 else ""
    if not origin:
        return f"`{record['path']}`{weight}"
    return f"`{record['path']}` as exported from `{origin['source_run']}` (sha256 {origin['sha256'][:12]}…){weight}"


def _soup_section(metrics: dict) -> str:
    soup = metrics.get(SOUP_KEY)
    if not soup:
        return ""
    kept = {s["ingredient"]: s for s in soup["steps"] if s["ingredient"] is not None}
    rows = [
        [
            _ingredient(i),
            f"{i['val']:.4f}",
            "all averaged" if soup["recipe"] == "uniform" else f"{kept[k]['score']:.4f}: {'kept' if kept[k]['kept'] else 'dropped'}",
        ]
        for k, i in enumerate(soup["ingredients"])
    ]
    return f"""## Weight averaging
This model is the average of the weights of {averaged_models(soup)} fine-tuned models (a {soup["recipe"]} model soup,
`train/soup.py`, `wastesort.training.soup`): each model with its BatchNorms folded into its convolutions, averaged tensor by
tensor, the BatchNorms then re-expanded on {soup["bn_statistics_images"]} training photos. One network at inference.
Greedy: ranked by their own val top-1, each next model kept if the soup's val top-1 does not drop
({soup["scored_on"]}; the test split plays no part).

{_table(["ingredient", "val top-1 alone", "soup val top-1 with it"], rows)}

"""


def _tta_section(metrics: dict) -> str:
    tta = metrics.get("tta")
    if not tta:
        return ""
    verdict = "kept and served as its own variant" if tta["kept"] else "not kept: it does not beat the plain model on val"
    rows = [
        ["plain", f"{tta['val_plain']:.4f}", f"{tta['test_plain']:.4f}"],
        ["image + flip, averaged", f"{tta['val_tta']:.4f}", f"{tta['test_tta']:.4f}"],
    ]
    return f"""## Test-time augmentation
The flip-averaged model (one ONNX graph running the batch and its mirror) against the plain one, ONNX Runtime on the
serving preprocessing: {verdict}.

{_table(["model", "val top-1", "test top-1"], rows)}

"""


def _confidence_section(metrics: dict) -> str:
    record = metrics.get("confidence")
    if not record:
        return ""
    rows = [
        [
            f"`{entry['file']}`",
            split,
            f"{entry['threshold']:.3f}",
            f"{m['coverage']:.1%}",
            f"{m['accuracy_answered']:.4f}",
            f"{m['answered_wrong']:.1%}",
            f"{m['ece_before']:.3f} → {m['ece_after']:.3f}",
        ]
        for entry in record["files"].values()
        for split, m in ((s, entry[s]) for s in ("val", "test"))
    ]
    header = ["file", "split", "unsure below", "answered", "right among answered", "answered wrongly", "ECE before → after"]
    gate = record.get("typicality_gate")
    typicality = (
        f" Photos unlike the training photos at any stage of the network (typicality beyond {gate:.2f}, val's"
        f" 97.5th percentile; {record['beyond_gate']['test']:.1%} of the test photos) get their logits divided by"
        " `exp(excess)`, so that their probabilities flatten below the threshold."
        if gate is not None
        else ""
    )
    return f"""## Unsure answers
Temperature scaling fitted on val (T = {record["temperature"]:.3f}, written into the classifier head, so every file and
variant carries it; the top-1 answers are unchanged), and a threshold per file chosen on val as the lowest top
probability at which {record["target_accuracy"]:.0%} of the answered val photos are right. Below it the service answers
*unsure* and the photo should go to a person.{typicality} Test played no part in any choice. On photos from elsewhere the
model is unsure far more often ([experiments/unsure_signal](experiments/unsure_signal/README.md)).

{_table(header, rows)}

"""


def _adapted_section(metrics: dict) -> str:
    """The site adaptation a ``make adapt`` release went through (``metrics.json``'s ``adapted``)."""
    adapted = metrics.get("adapted")
    if not adapted:
        return ""
    rows = [
        [title, f"{adapted['before'][key]['accuracy']:.4f}", f"{adapted['after'][key]['accuracy']:.4f}"]
        + [f"{adapted['after'][key]['coverage']:.1%}", f"{adapted['after'][key]['accuracy_answered']:.4f}"]
        for key, title in (("site_val", "the site's val photos"), ("trashnet_test", "TrashNet test"))
    ]
    photos = adapted["photos"]
    return f"""## Adapted to a site
This file is the release described here fine-tuned on a site's own labelled photos
(`make adapt DATA={adapted["site"]} OUT={adapted["out"]}`, then `make release RUN={adapted["out"]}`):
{photos["site_train"]} training photos of {", ".join(adapted["classes"])} with {photos["replay"]} replayed TrashNet training photos,
{adapted["config"]["epochs"]} epochs of the stages from block {adapted["config"]["first_trained_block"]} on, {adapted["seconds"]:.0f} s on {adapted["machine"]}.
Its calibration was fitted afresh: "val" under *Unsure answers* is the site's {photos["site_val"]} val photos with TrashNet's val photos.

{_table(["photos", "top-1 before", "top-1 after", "answered after", "right among answered after"], rows)}

"""


def _logit_adjustment_section(metrics: dict) -> str:
    adj = metrics.get("logit_adjustment")
    if not adj:
        return ""
    rare = min(adj["offsets"], key=adj["offsets"].get)
    rows = [
        [
            name,
            split,
            f"{adj['before'][name][split]['accuracy']:.4f} → {after['accuracy']:.4f}",
            f"{adj['before'][name][split]['macro_f1']:.4f} → {after['macro_f1']:.4f}",
            f"{adj['before'][name][split]['f1'][rare]:.3f} → {after['f1'][rare]:.3f}",
        ]
        for name, by_split in adj["after"].items()
        for split, after in by_split.items()
    ]
    offsets = ", ".join(f"{c} {v:+.3f}" for c, v in adj["offsets"].items())
    return f"""## Logit adjustment
Trained with the class-weighted loss, the network over-predicts the rare classes. The release adds
the log class frequency of the training split (the negative log of the loss's weights, centred) to the classifier
head's bias, which gives back the posterior for the training split's frequencies (`wastesort.training.logit_adjust`;
logit adjustment with τ = 1, derived from the loss, not tuned). Offsets: {offsets}. Every figure in this card is the
adjusted model's ({adj["measured"]}). Before → after:

{_table(["model", "split", "top-1", "macro F1", f"{rare} F1"], rows)}

"""


def _decoder_section(metrics: dict) -> str:
    dec = metrics.get("decoder")
    if not dec:
        return ""
    rows = [
        [f"trained: Pillow, `{dec['trained']}`", f"{dec['val_trained']:.4f}", f"{dec['test_trained']:.4f}"],
        [
            f"served: libjpeg-turbo (1/2-1/8 DCT scaling down to {dec['jpeg_draft_floor']:g} of the input), OpenCV `{dec['served']}`",
            f"{dec['val_served']:.4f}",
            f"{dec['test_served']:.4f}",
        ],
    ]
    return f"""## Decoder
This model was trained on Pillow's decoding and resize and is served through the faster decoder
(`train/release.py --decoder turbo`). The checkpoint (PyTorch, the same weights) through both; the release
is refused if the test top-1 drops.{"" if metrics.get("logit_adjustment") else " The test figures above are the training run's (Pillow)."}

{_table(["preprocessing", "val top-1", "test top-1"], rows)}

"""


def _interval(bounds: list[float], digits: int) -> str:
    return f"{bounds[0]:.{digits}f}–{bounds[1]:.{digits}f}"


def _top1_rows(metrics: dict, plain_file: str) -> str:
    """The summary's test and val top-1 rows: the served file's, with their bootstrap intervals
    (:mod:`wastesort.training.served`) and the plain file's figure when another file is served."""
    served = metrics["served"]
    rows = []
    for split, name, use in (("test", "**test top-1**", "held-out photos"), ("val", "val top-1", "photos, used for checkpoint selection")):
        m = served[split]
        figure = f"**{m['accuracy']:.4f}**" if split == "test" else f"{m['accuracy']:.4f}"
        text = f"{figure} on {metrics['split_sizes'][split]} {use} (macro F1 {m['macro_f1']:.4f})"
        text += f"; {CONFIDENCE:.0%} interval {_interval(m['interval']['top1'], 4)}; served file `{served['file']}`"
        if served["file"] != plain_file:
            text += f" (the plain file: {metrics[split]['accuracy']:.4f})"
        rows.append(f"| {name} | {text} |")
    return "\n".join(rows)


def build_card(run: Path, onnx_path: Path, notes: str, card_dir: Path = Path(".")) -> str:
    metrics = json.loads(onnx_path.with_suffix(".metrics.json").read_text())
    release = metrics.get("release", {})
    config = lineage_of(run, release)[-1][1]
    export = json.loads(onnx_path.with_suffix(".export.json").read_text())
    command = _commands(run, release)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    contract = PreprocessContract.from_metadata({p.key: p.value for p in proto.metadata_props})
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    digest = sha256(onnx_path)
    classes = metrics["classes"]
    test, val = metrics["test"], metrics["val"]
    manifest = onnx_path.with_suffix(".manifest.csv")
    splits = read_manifest(manifest, Path(config["data"]))
    counts = {c: [sum(s.label == i for s in splits[k]) for k in SPLITS] for i, c in enumerate(classes)}

    served = metrics["served"]  # the per-class figures are the served file's, with their intervals
    test, val = served["test"], served["val"]
    per_class = [
        [
            c,
            f"{test['per_class'][c]['precision']:.3f}",
            f"{test['per_class'][c]['recall']:.3f}",
            f"{test['per_class'][c]['f1']:.3f}",
            _interval(test["interval"]["f1"][c], 3),
            str(test["per_class"][c]["support"]),
            f"{val['per_class'][c]['f1']:.3f}",
        ]
        for c in classes
    ]
    per_class_header = ["class", "precision", "recall", "F1", f"F1 {CONFIDENCE:.0%} interval", "support", "val F1"]
    cm_rows = [[classes[i], *[str(v) for v in row]] for i, row in enumerate(test["confusion_matrix"])]
    worst = min(classes, key=lambda c: test["per_class"][c]["f1"])
    cm_table = _table(["true \\ pred", *classes], cm_rows)
    count_table = _table(["class", "train", "val", "test"], [[c, *map(str, counts[c])] for c in classes])
    return f"""# Model card: `{onnx_path.name}`

Waste-sorting image classifier: one photo of one item in, one of {len(classes)} classes out
({", ".join(classes)}). Generated by `train/model_card.py` from run `{run}`.

## Summary
| | |
|---|---|
| architecture | {metrics["model"]} (`wastesort.training.models`){_origin(run, release)} |
| parameters | {metrics["parameters"]:,} |
{_top1_rows(metrics, onnx_path.name)}
| training | {_training(metrics, release)} |
| file | `{shown(onnx_path)}`, {onnx_path.stat().st_size / 1e6:.1f} MB, ONNX opset {opset}, sha256 `{digest[:16]}…` |
| input | `IMAGES` float32 (N, 3, {contract.height}, {contract.width}), RGB, resize `{contract.resize}` ({contract.interpolation}), mean {list(contract.mean)}, std {list(contract.std)} |
| outputs | `LOGITS` and `PROBABILITIES` float32 (N, {len(classes)}) |
| export check | ONNX Runtime vs PyTorch on {export["images"]} real held-out photos: top-1 agreement {export["top1_agreement"]:.0%}, max abs logit difference {export["max_abs_logit_diff"]:.1e} (tolerance {export["tolerance"]:.0e}) |

The preprocessing contract and the ordered labels are stored in the ONNX file's
`metadata_props` (`preprocessing`, `labels`); `wastesort.inference.OnnxClassifier` (or any
ONNX consumer) needs nothing else.

## Data
TrashNet (Yang & Thung, MIT licence), the {sum(metrics["split_sizes"].values())} photos in `../shared/data/trashnet`
after content-hash deduplication; photos of single items on a white/grey background, 512x384.
Stratified split {config["split"][0]:.0%}/{config["split"][1]:.0%}/{config["split"][2]:.0%}, seed {split_seed_of(config)}, by content hash
(file names and order do not matter). The split is committed as `{shown(manifest)}` (relative paths and sha256, no images).

{count_table}

## Reproduce
```
{command}
python train/release.py --run {run}    # = make release RUN={run}: export, verify, TTA, card, repository
```
Training recipe{" of the first model averaged" if metrics.get(SOUP_KEY) else ""} (from `config.json`): AdamW lr {config["lr"]}, weight decay {config["weight_decay"]}, batch {config["batch_size"]},
{config["warmup_epochs"]} warm-up epochs then cosine, label smoothing {config["label_smoothing"]}, MixUp α={config["mixup_alpha"]} /
CutMix α={config["cutmix_alpha"]} on {config["mix_prob"]:.0%} of batches, random resized crop (scale ≥ {config["min_scale"]}), flips,
rotation, colour jitter, gradient clipping {config["grad_clip"]}, weight EMA {config["ema_decay"]}, class balance `{config["balance"]}`,
background replaced on {config.get("background", 0.0):.0%} of images{_scenes(config)}, blur on {config.get("blur", 0.0):.0%}, JPEG re-compression on {config.get("jpeg", 0.0):.0%}{_init(config)}.
Evaluation images go through exactly the serving preprocessing (`wastesort.preprocess`).

{_soup_section(metrics)}{_tta_section(metrics)}{_logit_adjustment_section(metrics)}{_adapted_section(metrics)}{_confidence_section(metrics)}{_decoder_section(metrics)}## Test results (per class{f", the served `{served['file']}`"})
{_table(per_class_header, per_class)}

Confusion matrix on the test split (rows: true class, columns: predicted):

{cm_table}

![confusion matrix]({os.path.relpath(onnx_path.with_suffix(".confusion_test.png"), card_dir)})

## Known weaknesses
- Weakest class on the test split: **{worst}** (F1 {test["per_class"][worst]["f1"]:.3f}). Most frequent confusions:
  {"; ".join(confused_pairs(test["confusion_matrix"], classes)) or "none"}.
- The test split has only {metrics["split_sizes"]["test"]} photos: one photo is {100 / metrics["split_sizes"]["test"]:.2f} points of accuracy, so
  differences of a point or two between models are within noise.
{notes}
"""


def notes_of(onnx_path: Path) -> str:
    """The hand-written ``models/<net>.notes.md`` beside ``onnx_path`` ("" without one)."""
    notes_file = onnx_path.with_suffix(".notes.md")
    return notes_file.read_text().rstrip() if notes_file.is_file() else ""


def write_card(run: Path, onnx_path: Path, out: Path) -> None:
    """Write the card of the committed model ``onnx_path`` (trained in ``run``) to ``out``;
    its :func:`notes_of`, if any, are appended to its known weaknesses."""
    out.write_text(build_card(run, onnx_path, notes_of(onnx_path), out.parent))
