"""Shared fixtures: small synthetic datasets made on the fly (no ../shared needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wastesort.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 6-class ImageFolder dataset, 40 JPEGs per class."""
    return generate(tmp_path_factory.mktemp("synthetic"), per_class=40, seed=1)


@pytest.fixture()
def small_root(tmp_path: Path) -> Path:
    """A writable 6-class dataset with 6 images per class, for tests that damage it."""
    return generate(tmp_path / "data", per_class=6, seed=2)
