"""Background replacement keeps the item (mask area and pixels on synthetic images with a
known foreground) and refuses images without a board; a composed scene puts the item, smaller,
on a varied floor, and a scene share of 0 leaves the augmentation as it was; the TTA export is the mean of the
plain model on the image and its mirror."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from wastesort.contract import PreprocessContract
from wastesort.inference import OnnxClassifier
from wastesort.shipped import PROBABILITIES
from wastesort.training.background import (
    FLOORS,
    KINDS,
    ReplaceBackground,
    compose_scene,
    foreground_mask,
    random_background,
    random_floor,
    replace_background,
)
from wastesort.training.export import FlipAveraged, export_onnx


def board_with_item(h: int = 180, w: int = 240, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """A TrashNet-like photo: an off-white board with a light gradient and sensor noise, and
    one coloured ellipse (the item). Returns (uint8 (3, H, W), the item's boolean mask)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w]
    board = np.stack([236 - 18 * xs / w, 234 - 18 * xs / w, 228 - 18 * xs / w], -1)  # light falls off to the right
    img = board + rng.normal(0, 3, (h, w, 3))
    item = ((xs - 0.55 * w) / (0.25 * w)) ** 2 + ((ys - 0.5 * h) / (0.3 * h)) ** 2 <= 1
    texture = rng.normal(0, 10, (h, w, 1))
    img[item] = (np.array([170, 70, 40]) + texture[item]).clip(0, 255)
    return torch.from_numpy(img.clip(0, 255).round().astype(np.uint8)).permute(2, 0, 1).contiguous(), item


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_finds_the_item(seed: int) -> None:
    image, item = board_with_item(seed=seed)
    mask = foreground_mask(image)
    assert mask is not None and mask.shape == item.shape
    found = mask.numpy() > 0.5
    assert abs(found.sum() - item.sum()) / item.sum() < 0.08
    assert (found & item).sum() / item.sum() > 0.97  # the item is kept...
    assert (found & ~item).sum() / (~item).sum() < 0.03  # ...and the board is not


@pytest.mark.parametrize("kind", KINDS)
def test_replacement_keeps_item_pixels_and_changes_the_board(kind: str) -> None:
    image, item = board_with_item(seed=3)
    out = replace_background(image, torch.Generator().manual_seed(5), kind)
    assert out.dtype == torch.uint8 and out.shape == image.shape
    inner = torch.from_numpy(item)
    # erode the item by a few pixels: away from the soft edge the pixels are untouched
    inner = -torch.nn.functional.max_pool2d(-inner.float()[None, None], 9, stride=1, padding=4)[0, 0] > 0.5
    assert torch.equal(out[:, inner], image[:, inner])
    board = torch.from_numpy(~item)
    board = -torch.nn.functional.max_pool2d(-board.float()[None, None], 9, stride=1, padding=4)[0, 0] > 0.5
    changed = (out[:, board].int() - image[:, board].int()).abs().amax(0) > 12
    assert changed.float().mean() > 0.5  # (a random colour can come close to the board's by chance in places)


def test_no_board_means_no_replacement() -> None:
    rng = np.random.default_rng(0)
    full_frame = torch.from_numpy(rng.integers(90, 140, (3, 120, 160), dtype=np.uint8))  # an item filling the frame
    assert foreground_mask(full_frame) is None
    assert torch.equal(replace_background(full_frame, torch.Generator().manual_seed(0)), full_frame)
    blank = torch.full((3, 120, 160), 235, dtype=torch.uint8)  # a bare board: nothing to keep
    assert foreground_mask(blank) is None


def test_backgrounds_are_varied_and_seeded() -> None:
    draws = [random_background(64, 96, torch.Generator().manual_seed(s)) for s in range(8)]
    assert all(d.shape == (3, 64, 96) and d.dtype == torch.uint8 for d in draws)
    assert len({d.float().mean().round().item() for d in draws}) > 4
    assert torch.equal(random_background(64, 96, torch.Generator().manual_seed(3)), draws[3])


class Asymmetric(nn.Module):
    """A tiny classifier that is not mirror-symmetric, so TTA changes its output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), (1, 4)).flatten(1))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_scene_shows_the_item_smaller_on_a_floor(seed: int) -> None:
    image, item = board_with_item(seed=seed)
    scene = compose_scene(image, foreground_mask(image), torch.Generator().manual_seed(seed))
    assert scene.shape == image.shape and scene.dtype == torch.uint8
    reddish = lambda x: ((x[0].int() - x[2].int()) > 80).float().mean().item()  # noqa: E731  the item is red, the floors are muted
    assert 0.1 * item.mean() < reddish(scene) < 0.95 * reddish(image)
    board = ~torch.from_numpy(item)
    assert (scene.float() - image.float()).abs().mean(0)[board].mean() > 10  # the board is gone


def test_floors_are_varied_textures() -> None:
    generator = torch.Generator().manual_seed(0)
    floors = [random_floor(96, 128, generator, kind) for kind in FLOORS]
    assert all(f.shape == (3, 96, 128) and f.dtype == torch.uint8 and f.float().std() > 2 for f in floors)
    assert len({f.float().mean().round().item() for f in floors}) == len(FLOORS)


def test_a_scene_share_of_zero_draws_exactly_as_before() -> None:
    image, _ = board_with_item(seed=4)
    outputs = [ReplaceBackground(1.0, torch.Generator().manual_seed(7), scene)(image) for scene in (0.0, 0.0, 1.0)]
    generator = torch.Generator().manual_seed(7)
    torch.rand(1, generator=generator)  # the draw that decides whether to replace
    reference = replace_background(image, generator)
    assert torch.equal(outputs[0], reference) and torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[2], reference)


def test_tta_export_is_the_mean_of_image_and_mirror(tmp_path: Path) -> None:
    contract = PreprocessContract(height=32, width=32)
    model = Asymmetric().eval()
    plain = OnnxClassifier(export_onnx(model, contract, tmp_path / "plain.onnx"))
    tta = OnnxClassifier(export_onnx(FlipAveraged(model), contract, tmp_path / "tta.onnx"))
    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    expected = (plain.probabilities(x) + plain.probabilities(np.ascontiguousarray(x[..., ::-1]))) / 2
    got = tta.run([PROBABILITIES], x)[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert np.abs(got - plain.probabilities(x)).max() > 1e-3  # the mirror really went through the model
    np.testing.assert_allclose(tta.run([PROBABILITIES], x[:1])[0], expected[:1], atol=1e-6)  # batch of one


def test_the_onnx_tta_rewrite_equals_the_pytorch_tta_export(tmp_path: Path) -> None:
    """``variants.tta.flip_averaged`` (what ``make build`` applies to the INT8 model) computes on
    the ONNX graph what ``FlipAveraged`` exports from PyTorch: the mean of the image and its
    mirror, with the classifier contract (names, metadata, PROBABILITIES = softmax(LOGITS))."""
    from wastesort.shipped import LOGITS
    from wastesort.variants.tta import flip_averaged

    contract = PreprocessContract(height=32, width=32)
    model = Asymmetric().eval()
    plain_path = export_onnx(model, contract, tmp_path / "plain.onnx")
    plain = OnnxClassifier(plain_path)
    rewritten = OnnxClassifier(flip_averaged(plain_path, tmp_path / "rewritten.onnx"))
    exported = OnnxClassifier(export_onnx(FlipAveraged(model), contract, tmp_path / "tta.onnx"))
    for n in (1, 4):
        x = np.random.default_rng(n).normal(size=(n, 3, 32, 32)).astype(np.float32)
        expected = (plain.probabilities(x) + plain.probabilities(np.ascontiguousarray(x[..., ::-1]))) / 2
        logits, probs = rewritten.run([LOGITS, PROBABILITIES], x)
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        np.testing.assert_allclose(probs, exported.run([PROBABILITIES], x)[0], atol=1e-6)
        np.testing.assert_allclose(np.exp(logits), expected, atol=1e-6)
        assert np.abs(probs - plain.probabilities(x)).max() > 1e-3
    assert rewritten.contract == contract and rewritten.labels == plain.labels
    with pytest.raises(ValueError, match="already has test-time augmentation"):
        flip_averaged(tmp_path / "rewritten.onnx", tmp_path / "twice.onnx")
    half = onnx.load(str(plain_path))
    half.graph.output[1].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(half, str(tmp_path / "half.onnx"))
    with pytest.raises(ValueError, match="is not float32"):
        flip_averaged(tmp_path / "half.onnx", tmp_path / "half_tta.onnx")
    assert not (tmp_path / "half_tta.onnx").exists()


def test_the_proxy_report_keeps_earlier_rows_marked_and_ships_by_its_rule() -> None:
    from wastesort.training.proxy import carried, choose

    def row(run: str, plain: float, replaced: float) -> dict:
        return {"run": run, "test_plain": plain, "test_replaced": replaced}

    earlier = [row("runs/a", 0.94, 0.70), row("runs/b", 0.937, 0.82), row("runs/c", 0.92, 0.85)]
    rows = carried([row("runs/b", 0.938, 0.80), row("runs/d", 0.941, 0.83)], earlier)
    assert [r["run"] for r in rows] == ["runs/b", "runs/d", "runs/a", "runs/c"]  # runs scored again replace their old rows
    assert [bool(r.get("earlier")) for r in rows] == [False, False, True, True]
    assert choose(rows, max_plain_drop=0.5)["run"] == "runs/d"  # c is better off the board but 2.1 points worse plain
    assert choose(rows, max_plain_drop=3.0)["run"] == "runs/c"
