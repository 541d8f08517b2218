"""The served-default rule (``wastesort.triton.default``): the fastest ensemble unless a slower
one wins by more than one standard error on val and test together, and how its mark travels
through the generated repository to every reader."""

from __future__ import annotations

import json
import math
import shutil
from functools import partial
from pathlib import Path

import pytest

from wastesort.paths import MODELS_DIR
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton.config import committed_default, marked_default, parse_config, set_default_mark, write_repository
from wastesort.triton.default import DEFAULT_PARAMETER, Candidate, choose, marked_in, pick
from wastesort.triton.naming import TTA, default_ensembles, ensemble_name, ensemble_of, variant_name

NET = DEFAULT_NET


def test_the_fastest_stays_unless_a_slower_one_wins_by_more_than_one_standard_error() -> None:
    fast = Candidate("fast", 600, 642, 300.0)
    se_photos = fast.standard_error() * 642  # one standard error, in photos
    assert math.isclose(fast.standard_error(), math.sqrt(fast.accuracy * (1 - fast.accuracy) / 642))
    within = Candidate("slow", 600 + math.floor(se_photos), 642, 150.0)
    beyond = Candidate("slow", 600 + math.ceil(se_photos), 642, 150.0)
    assert pick([fast, within])[0] is fast
    choice, why = pick([fast, beyond])
    assert choice is beyond and len(why) == 2 and "takes its place" in why[1]
    # the walk goes on from the new choice: a third must beat the second, not the first
    slowest = Candidate("slowest", beyond.correct + 1, 642, 50.0)
    assert pick([fast, beyond, slowest])[0] is beyond
    with pytest.raises(ValueError):
        pick([])


def test_choose_takes_the_first_marked_ready_ensemble_else_the_first_ready() -> None:
    ready = ["int8", "tta", "plain"]
    assert choose(ready, {"plain"}.__contains__) == "plain"
    assert choose(ready, {"tta", "plain"}.__contains__) == "tta"
    assert choose(ready, set().__contains__) == "int8"
    assert choose([], set().__contains__) is None


def test_marks_are_read_from_http_and_grpc_json() -> None:
    config = {"name": "e", "parameters": {DEFAULT_PARAMETER: {"string_value": "1"}}}
    assert marked_in(config) and marked_in({"config": config})
    assert not marked_in({"name": "e"}) and not marked_in({"config": {"parameters": {DEFAULT_PARAMETER: {"string_value": "0"}}}})


def test_the_committed_repository_marks_the_rules_pick_from_the_release_record() -> None:
    """The committed release's TTA model is right on a few more val and test photos than the
    plain one, fewer than one standard error: the plain ensemble is marked, and only it."""
    model = ShippedModel(NET)
    record = json.loads(model.metrics.read_text())
    sizes, tta = record["split_sizes"], record["tta"]
    photos = sizes["val"] + sizes["test"]
    counts = {kind: sum(round(tta[f"{s}_{kind}"] * sizes[s]) for s in ("val", "test")) for kind in ("plain", "tta")}
    plain, with_tta = Candidate("plain", counts["plain"], photos), Candidate("tta", counts["tta"], photos)
    expected = ensemble_of(variant_name(NET, TTA)) if pick([plain, with_tta])[0] is with_tta else ensemble_name(NET)
    assert committed_default(model.onnx, NET) == expected
    repository = Path(__file__).resolve().parents[1] / "model_repository"
    committed = (ensemble_of(variant_name(NET, TTA)), ensemble_name(NET))  # make build's own may be marked too
    assert [e for e in committed if marked_default(repository, e)] == [expected]


def test_a_release_without_figures_or_tta_marks_the_plain_ensemble(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    onnx = models / f"{NET}.onnx"
    shutil.copyfile(MODELS_DIR / f"{NET}.onnx", onnx)
    shutil.copyfile(MODELS_DIR / f"{NET}.tta.onnx", models / f"{NET}.tta.onnx")  # TTA, but no metrics record
    repository = tmp_path / "repo"
    write_repository(repository, onnx, NET)
    assert [e for e in default_ensembles(NET) if marked_default(repository, e)] == [ensemble_name(NET)]
    # a record whose TTA wins by far more than one standard error marks the TTA ensemble instead
    sizes = {"train": 10, "val": 300, "test": 300}
    (models / f"{NET}.metrics.json").write_text(
        json.dumps({"split_sizes": sizes, "tta": {"val_plain": 0.80, "test_plain": 0.80, "val_tta": 0.90, "test_tta": 0.90}})
    )
    write_repository(repository, onnx, NET)
    tta = ensemble_of(variant_name(NET, TTA))
    assert [e for e in default_ensembles(NET) if marked_default(repository, e)] == [tta]
    assert choose([e for e in default_ensembles(NET) if (repository / e).is_dir()], partial(marked_default, repository)) == tta


def test_build_sets_and_clears_the_mark_keeping_the_header(tmp_path: Path) -> None:
    repository = Path(__file__).resolve().parents[1] / "model_repository"
    target = tmp_path / ensemble_name(NET)
    shutil.copytree(repository / ensemble_name(NET), target)
    header = (target / "config.pbtxt").read_text().splitlines()[0]
    for on in (False, True, False):
        set_default_mark(tmp_path, ensemble_name(NET), on)
        assert marked_default(tmp_path, ensemble_name(NET)) is on
        assert (target / "config.pbtxt").read_text().splitlines()[0] == header
        assert parse_config(target / "config.pbtxt").ensemble_scheduling.step[1].model_name == f"{NET}_onnx"
