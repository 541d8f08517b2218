"""Well-known locations inside a checkout."""

from __future__ import annotations

import os
from pathlib import Path

#: Root of the checkout (the folder holding ``pyproject.toml``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Committed, trained FP32 ONNX models: ``models/<net>.onnx``.
MODELS_DIR = REPO_ROOT / "models"
#: Training runs (untracked): ``runs/<name>/``.
RUNS_DIR = REPO_ROOT / "runs"
#: The real TrashNet photos, read in place and never copied into the repository.
DEFAULT_TRASHNET = Path(os.environ.get("TRASHNET_DIR", REPO_ROOT.parent / "shared" / "data" / "trashnet"))


def in_repo(recorded: str | Path) -> Path:
    """A path as the project's records hold it (a run in ``.export.json``, ``config.json``, a
    release's lineage): relative to the checkout's root; an absolute path stays itself."""
    return REPO_ROOT / recorded


def shown(path: str | Path) -> Path:
    """``path`` as a record or report names it: relative to the checkout's root when it lies
    inside the checkout (records are read there), otherwise resolved to an absolute path."""
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
