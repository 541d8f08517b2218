"""How does each shipped model do on photos unlike TrashNet's, before any adaptation?

    python experiments/zero_shot/measure.py --data ../shared/data/trashnet

For every committed model file (``models/<net>.onnx`` and its TTA form where there is one):
top-1 on TrashNet's test split, on the same photos with the board replaced by random
backgrounds (``wastesort.training.background.proxy_tensor``), and on the same photos composited
on the simulated site (``experiments/simulated_site``; photos whose board the mask cannot find
are left out and counted); for a calibrated file also the share answered and the share of all
photos answered wrongly at its own threshold. Measured with ONNX Runtime on the serving
preprocessing; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from wastesort.confidence import read as read_confidence
from wastesort.confidence import selective
from wastesort.contract import PreprocessContract
from wastesort.evaluation import split_tensors
from wastesort.inference import OnnxClassifier
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR
from wastesort.preprocess import decode, preprocess_bytes
from wastesort.shipped import ShippedModel
from wastesort.training.background import proxy_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulated_site"))
import make_site  # noqa: E402

SETS = {"test": "TrashNet test", "replaced": "replaced backgrounds", "site": "simulated site"}


def site_set(paths: list[Path], labels: np.ndarray, contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray, int]:
    """The photos composited on the simulated site's floor (JPEG quality 80, as the site's
    photos), their labels, and how many were left out (no board found)."""
    background, rng, rows, kept = make_site.floor(), np.random.default_rng(make_site.SEED + 7), [], []
    for i, path in enumerate(paths):
        site = make_site.composite(np.asarray(decode(path.read_bytes()), np.uint8), background, rng)
        if site is None:
            continue
        buffer = io.BytesIO()
        Image.fromarray(site).save(buffer, "JPEG", quality=80)
        rows.append(preprocess_bytes(buffer.getvalue(), contract))
        kept.append(i)
    return np.stack(rows), labels[kept], len(paths) - len(kept)


def measure(data: Path, models_dir: Path = MODELS_DIR) -> dict:
    nets = sorted(p.stem for p in models_dir.glob("*.onnx") if p.stem.count(".") == 0)
    results: dict = {"machine": one_line(describe()), "files": {}}
    sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    made_for = None  # the sets are made once for every model with the same split and contract
    for net in nets:
        model = ShippedModel(net, folder=models_dir)
        contract = PreprocessContract.from_onnx(str(model.onnx))
        test = model.split("test", data)
        key = (contract, model.manifest.read_bytes())
        if made_for != key:
            x, y = split_tensors(test, contract, "test")
            site_x, site_y, left_out = site_set([s.path for s in test], y, contract)
            sets = {"test": (x, y), "replaced": (proxy_tensor([s.path for s in test], contract), y), "site": (site_x, site_y)}
            made_for, results["site_left_out"] = key, left_out
        for path in (model.onnx, model.tta_onnx):
            if not path.is_file():
                continue
            classifier, confidence = OnnxClassifier(path), read_confidence(path)
            entry: dict = {"threshold": confidence.threshold if confidence else None}
            for name in SETS:
                x, y = sets[name]
                probabilities = classifier.probabilities(x)
                entry[name] = {"photos": len(y), "top1": float((probabilities.argmax(1) == y).mean())}
                if confidence:
                    entry[name] |= selective(probabilities, y, confidence.threshold)
            results["files"][path.name] = entry
    return results


def markdown(results: dict) -> str:
    rows = []
    for name, entry in results["files"].items():
        cells = [f"`{name}`"]
        for key in SETS:
            m = entry[key]
            answered = f"{m['coverage']:.1%} / {m['answered_wrong']:.1%}" if entry["threshold"] is not None else "not calibrated"
            cells += [f"{m['top1']:.4f}", answered]
        rows.append("| " + " | ".join(cells) + " |")
    header = " | ".join(f"{title} top-1 | {title}: answered / answered wrongly" for title in SETS.values())
    return "\n".join(
        [
            f"# Zero-shot: measured by `experiments/zero_shot/measure.py` on {results['machine']}",
            "",
            f"TrashNet's test photos as they are, with random backgrounds, and on the simulated site "
            f"({results['site_left_out']} photos left out there: no board found). Answered: at the file's own unsure threshold.",
            "",
            f"| file | {header} |",
            "|---|" + "---|" * (2 * len(SETS)),
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--models-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.md"))
    args = parser.parse_args(argv)
    results = measure(args.data, args.models_dir)
    args.out.write_text(markdown(results))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
