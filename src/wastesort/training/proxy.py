"""The replaced-background proxy: how runs score on their split as it is and with TrashNet's white
board replaced (:func:`wastesort.training.background.proxy_tensor`), and which run to ship.

Contract: a row is ``{"run", "background_p", "blur_p", "jpeg_p", "<split>_plain", "<split>_replaced",
"<split>_images"}`` for the val and test splits (top-1 of the run's ``best.pt``, as trained).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from wastesort.preprocess import preprocess_files
from wastesort.training.background import proxy_tensor
from wastesort.training.evaluate import predict
from wastesort.training.export import load_checkpoint, run_splits


def scores(run: Path) -> dict:
    """Top-1 of ``run/best.pt`` on val and test, plain and with backgrounds replaced."""
    model, contract, _ = load_checkpoint(run / "best.pt")
    config = json.loads((run / "config.json").read_text())
    splits = run_splits(run)
    out = {"run": str(run), **{f"{k}_p": config.get(k, 0.0) for k in ("background", "blur", "jpeg")}}
    for split in ("val", "test"):
        paths = [s.path for s in splits[split]]
        y = torch.tensor([s.label for s in splits[split]])
        for kind, x in (("plain", preprocess_files(paths, contract, f"{split} plain")), ("replaced", proxy_tensor(paths, contract))):
            logits = torch.from_numpy(predict(model, torch.from_numpy(x)))
            out[f"{split}_{kind}"] = float((logits.argmax(1) == y).float().mean())
        out[f"{split}_images"] = len(paths)
    return out


def carried(rows: list[dict], previous: list[dict]) -> list[dict]:
    """``rows`` then the rows of an earlier report (``previous``) for runs not scored again,
    marked ``"earlier": True`` (their checkpoints may be gone; the figures are as measured then)."""
    scored = {r["run"] for r in rows}
    return rows + [{**r, "earlier": True} for r in previous if r["run"] not in scored]


def choose(rows: list[dict], max_plain_drop: float) -> dict:
    """Best ``test_replaced`` among runs within ``max_plain_drop`` points of the best ``test_plain``."""
    best_plain = max(r["test_plain"] for r in rows)
    eligible = [r for r in rows if (best_plain - r["test_plain"]) * 100 <= max_plain_drop + 1e-9]
    return max(eligible, key=lambda r: (r["test_replaced"], r["test_plain"]))
