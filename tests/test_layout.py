"""The product/lab boundary: studies live in ``experiments/``, indexed; the package and the entry
scripts never import them; ``docs/`` holds documentation, no code; the top level keeps the layout
the project was asked for."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("src", "train", "build", "client", "perf", "reliability", "deploy", "tests")
TOP_LEVEL = ("pyproject.toml", "README.md", "CHANGELOG.md", "model_repository", "build", "train", "client", "perf", "tests",
             "docker-compose.yml", "experiments")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _product_files() -> list[Path]:
    return [p for folder in PRODUCT for p in sorted((ROOT / folder).rglob("*.py"))]


def test_the_product_never_imports_the_experiments() -> None:
    """Neither ``import experiments...`` nor a path into ``experiments/`` put on ``sys.path``."""
    offenders = []
    for path in _product_files():
        if any(name == "experiments" or name.startswith("experiments.") for name in _imported_modules(path)):
            offenders.append(f"{path.relative_to(ROOT)}: imports experiments")
        if re.search(r"sys\.path\.(insert|append)\([^)]*experiments", path.read_text()):
            offenders.append(f"{path.relative_to(ROOT)}: puts experiments/ on sys.path")
    assert not offenders, offenders


def test_the_boundary_check_sees_an_import(tmp_path: Path) -> None:
    """The check above is not blind: it finds both spellings of the import."""
    probe = tmp_path / "probe.py"
    probe.write_text("import experiments.soup.interpolate\nfrom experiments import soup\n")
    assert _imported_modules(probe) == {"experiments.soup.interpolate", "experiments"}


def test_docs_hold_no_code() -> None:
    code = [str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*") if p.suffix in {".py", ".sh"}]
    assert not code, f"code under docs/ belongs in experiments/<study>/: {code}"


def test_every_study_folder_has_an_index_row_and_a_readme() -> None:
    index = (ROOT / "experiments" / "README.md").read_text()
    studies = sorted(p.name for p in (ROOT / "experiments").iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    assert studies, "experiments/ holds no study"
    for study in studies:
        assert f"]({study}/)" in index, f"experiments/README.md has no row linking {study}/"
        assert (ROOT / "experiments" / study / "README.md").is_file(), f"experiments/{study}/ has no README.md"


def test_the_top_level_keeps_the_layout() -> None:
    missing = [name for name in TOP_LEVEL if not (ROOT / name).exists()]
    assert not missing, missing
    assert not (ROOT / "build" / "__init__.py").exists(), "build/ must not shadow PyPA's build package"


MARKDOWN = ("*.md", "docs/**/*.md", "experiments/**/*.md", "models/*.md", "samples/*.md", "deploy/**/*.md", "perf/**/*.md", "build/*.md")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_relative_links_in_the_markdown_resolve() -> None:
    """Every relative link in the committed Markdown points at a file or folder that exists."""
    broken = []
    for path in sorted({p for pattern in MARKDOWN for p in ROOT.glob(pattern)}):
        if path.name.endswith(".notes.md"):
            continue  # a fragment of MODEL_CARD.md, linked from there
        for target in LINK.findall(path.read_text()):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert not broken, broken
