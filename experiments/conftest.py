"""The studies' own tests reuse the product suite's helpers (``tests/lite_models.py``) and its
synthetic data set; ``pytest experiments`` (``make test-experiments``) runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from wastesort.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same learnable 6-class data set as the product suite's fixture of this name."""
    return generate(tmp_path_factory.mktemp("synthetic"), per_class=40, seed=1)
