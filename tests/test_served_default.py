"""The served-default rule (``wastesort.triton.default``): the fastest ensemble unless a slower
one wins by more than one standard error on val and test together, and how its mark travels
through the generated repository to every reader."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from wastesort.paths import DEFAULT_TRASHNET, MODELS_DIR, REPO_ROOT
from wastesort.shipped import DEFAULT_NET, ShippedModel
from wastesort.triton.config import committed_default, marked_default, parse_config, set_default_mark, write_repository
from wastesort.triton.default import DEFAULT_PARAMETER, Candidate, choose, marked_in, pick
from wastesort.triton.naming import INT8, TTA, default_ensembles, ensemble_name, ensemble_of, variant_name

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
    assert model.served_onnx == (model.tta_onnx if expected != ensemble_name(NET) else model.onnx)
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
    assert ShippedModel(NET, models).served_onnx == models / f"{NET}.tta.onnx"  # the card measures what is marked
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


@pytest.mark.server
@pytest.mark.skipif(not DEFAULT_TRASHNET.is_dir(), reason=f"real TrashNet photos not found at {DEFAULT_TRASHNET}")
def test_make_build_marks_the_rules_pick_and_the_client_uses_it(tmp_path: Path) -> None:
    """The done-when check, small: build the INT8 variant into a copy of the repository, then the
    record's pick is the rule's over its own figures, it is the one marked, and the client's
    default on a real server over that repository."""
    from wastesort.triton.server import TritonServer

    repository = tmp_path / "repo"
    write_repository(repository, MODELS_DIR / f"{NET}.onnx", NET)
    build = [sys.executable, str(REPO_ROOT / "build" / "build.py"), "--variants", "onnx_int8", "--calibration-images", "24"]
    build += ["--bench-batch", "8", "--bench-iters", "3", "--repository", str(repository), "--out", str(tmp_path / "out")]
    done = subprocess.run([*build, "--report", str(tmp_path / "report.json"), "--force"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "served_default.json").read_text())
    candidates = [Candidate(**c) for c in record["candidates"]]
    assert {c.ensemble for c in candidates} == {ensemble_name(NET), ensemble_of(variant_name(NET, INT8))}  # timed in this run
    assert [c.img_s for c in candidates] == sorted((c.img_s for c in candidates), reverse=True)
    assert pick(candidates)[0].ensemble == record["default"] and f"served default: {record['default']}" in done.stdout
    on_disk = [e for e in default_ensembles(NET) if (repository / e / "config.pbtxt").is_file()]
    assert choose(on_disk, partial(marked_default, repository)) == record["default"]
    with TritonServer(repository, log_path=tmp_path / "server.log") as server:
        photo = REPO_ROOT / "samples" / "glass" / "glass363.jpg"
        client = subprocess.run(
            [sys.executable, str(REPO_ROOT / "client" / "classify.py"), str(photo), "--url", server.http_url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert client.returncode == 0 and f"with {record['default']} over http" in client.stderr, client.stderr
