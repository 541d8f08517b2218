"""``adjust_logits.py``: a model that already carries the offsets is refused, untouched."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from wastesort.shipped import ShippedModel
from wastesort.training import logit_adjust as la

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adjust_logits as adjust_cli  # noqa: E402


def test_adjust_logits_refuses_the_committed_model_a_second_time(capsys: pytest.CaptureFixture) -> None:
    model = ShippedModel()
    if la.recorded(model.onnx) is None:
        pytest.skip(f"{model.onnx.name} is not logit-adjusted")
    before = model.onnx.read_bytes()
    assert adjust_cli.main(["--net", model.net]) == 2
    assert "already logit-adjusted" in capsys.readouterr().err
    assert model.onnx.read_bytes() == before
