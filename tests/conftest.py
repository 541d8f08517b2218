"""Shared fixtures: small synthetic datasets made on the fly (no ../shared needed), the client
script as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from wastesort.paths import REPO_ROOT
from wastesort.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A learnable 6-class ImageFolder dataset, 40 JPEGs per class."""
    return generate(tmp_path_factory.mktemp("synthetic"), per_class=40, seed=1)


@pytest.fixture()
def small_root(tmp_path: Path) -> Path:
    """A writable 6-class dataset with 6 images per class, for tests that damage it."""
    return generate(tmp_path / "data", per_class=6, seed=2)


@pytest.fixture(scope="session")
def client_module() -> ModuleType:
    """``client/classify.py`` imported as the module ``classify`` (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("classify", REPO_ROOT / "client" / "classify.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["classify"] = module
    spec.loader.exec_module(module)
    return module
