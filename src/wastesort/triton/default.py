"""Which ensemble answers a client that names none (no Triton imports: the client uses it).

The rule, written down before any figure was looked at: order the candidate ensembles
fastest first. The fastest is the default; walking down the list, a slower candidate takes
its place only if it is right on more of the val and test photos (counted together) by more
than one standard error of the current choice's accuracy, ``sqrt(p (1 - p) / n)``. A variant
that costs more compute (test-time augmentation runs the network twice per photo) must win by
more than the noise of a few hundred photos.

The choice travels in the model repository: the chosen ensemble's ``config.pbtxt`` carries
the parameter :data:`DEFAULT_PARAMETER`. ``make release`` marks one of the ensembles it commits
(the plain one or the TTA one), ``make build`` marks one of those it installs when the rule
over every candidate picks one of them. :func:`choose` is how every reader (the client, perf,
Model Analyzer) resolves the marks: the first ready ensemble of
:func:`~wastesort.triton.naming.default_ensembles` that is marked, else the first ready one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

#: Model-config parameter (``"1"``) of the ensemble the rule picked.
DEFAULT_PARAMETER = "served_default"


@dataclass(frozen=True)
class Candidate:
    """One ensemble the rule may pick: photos right out of the val and test photos, and its
    classifier's throughput (``None`` where the order is known by construction)."""

    ensemble: str
    correct: int
    photos: int
    img_s: float | None = None

    @property
    def accuracy(self) -> float:
        return self.correct / self.photos

    def standard_error(self) -> float:
        """One standard error of this accuracy over its photos."""
        p = self.accuracy
        return math.sqrt(p * (1.0 - p) / self.photos)


def pick(fastest_first: Sequence[Candidate]) -> tuple[Candidate, list[str]]:
    """The rule of this module over candidates ordered fastest first; returns the choice and
    one line per step saying why."""
    if not fastest_first:
        raise ValueError("no candidate ensembles to choose the default from")
    choice, why = fastest_first[0], [f"{fastest_first[0].ensemble}: the fastest, {_figures(fastest_first[0])}"]
    for slower in fastest_first[1:]:
        margin, se = slower.accuracy - choice.accuracy, choice.standard_error()
        verdict = "takes its place" if margin > se else f"stays with {choice.ensemble}"
        points = f"{margin * 100:+.2f} points against one standard error of {se * 100:.2f}"
        why.append(f"{slower.ensemble}: {_figures(slower)}, {points}: {verdict}")
        if margin > se:
            choice = slower
    return choice, why


def _figures(candidate: Candidate) -> str:
    speed = f", {candidate.img_s:.0f} img/s" if candidate.img_s is not None else ""
    return f"{candidate.correct}/{candidate.photos} val+test photos right ({candidate.accuracy:.4f}){speed}"


def choose(ready: Sequence[str], marked: Callable[[str], bool]) -> str | None:
    """The ensemble a client uses: the first of ``ready`` (in
    :func:`~wastesort.triton.naming.default_ensembles` order) that ``marked`` says carries
    :data:`DEFAULT_PARAMETER`, else the first of ``ready``; ``None`` when none is ready."""
    return next((name for name in ready if marked(name)), ready[0] if ready else None)


def marked_in(config: dict) -> bool:
    """Whether a model config as JSON (HTTP's ``get_model_config``, or gRPC's with
    ``as_json=True``, which wraps it in ``"config"``) carries :data:`DEFAULT_PARAMETER`."""
    parameters = config.get("config", config).get("parameters", {})
    return parameters.get(DEFAULT_PARAMETER, {}).get("string_value") == "1"
