"""Tensors for training and evaluation.

* Evaluation images go through exactly the serving preprocessing
  (:func:`wastesort.preprocess.preprocess_bytes`), once, and are kept as one float32 tensor.
* Training images are decoded once (the contract's decoder and interpolation) into a uint8 cache a
  little larger than the model input, so an epoch costs no JPEG decoding; augmentation
  (torchvision ``transforms.v2``) then runs on the small cached tensors.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torchvision.transforms import v2
from tqdm import tqdm

from wastesort.contract import PreprocessContract
from wastesort.data import Sample
from wastesort.evaluation import split_tensors
from wastesort.preprocess import decode_for, resize_to
from wastesort.training.background import ReplaceBackground

#: Training cache side relative to the model input (room for zoom-in crops).
CACHE_SCALE = 1.25


def eval_tensor(samples: list[Sample], contract: PreprocessContract, desc: str = "eval images") -> tuple[torch.Tensor, torch.Tensor]:
    """float32 ``(N, 3, H, W)`` exactly as served, and int64 labels ``(N,)``."""
    x, y = split_tensors(samples, contract, desc)
    return torch.from_numpy(x), torch.from_numpy(y)


def _load_cache(sample: Sample, size: tuple[int, int], contract: PreprocessContract) -> np.ndarray:
    with open(sample.path, "rb") as fh:
        img = decode_for(fh.read(), contract, size)
    return resize_to(img, size, contract.interpolation).transpose(2, 0, 1)


def train_cache(samples: list[Sample], contract: PreprocessContract) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, 3, h, w)`` with ``h, w = CACHE_SCALE * input`` (whole image, squashed), labels."""
    size = (round(contract.width * CACHE_SCALE), round(contract.height * CACHE_SCALE))
    with ThreadPoolExecutor(max_workers=2) as pool:
        jobs = pool.map(lambda s: _load_cache(s, size, contract), samples)
        arrays = list(tqdm(jobs, total=len(samples), desc="train images", leave=False, disable=None))
    return torch.from_numpy(np.stack(arrays)), torch.tensor([s.label for s in samples], dtype=torch.int64)


def train_transform(
    contract: PreprocessContract,
    min_scale: float = 0.35,
    rotation: float = 20.0,
    jitter: float = 0.3,
    background: float = 0.0,
    scene: float = 0.0,
    blur: float = 0.0,
    jpeg: float = 0.0,
    seed: int = 0,
    augment: bool = True,
) -> v2.Transform:
    """Per-image augmentation on uint8 CHW tensors -> float32, normalised per the contract.

    ``background``, ``blur`` and ``jpeg`` are probabilities: the board replaced by a random
    background (:mod:`wastesort.training.background`; a share ``scene`` of those as a whole
    scene on a floor), a Gaussian blur, a JPEG re-compression at quality 30-95.
    ``augment=False``: resize to the input and normalise, nothing else."""
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(contract.mean), std=list(contract.std))]
    if not augment:
        return v2.Compose([v2.Resize((contract.height, contract.width), antialias=True), *normalise])
    aspect = contract.width / contract.height
    return v2.Compose(
        [
            ReplaceBackground(background, torch.Generator().manual_seed(seed), scene),
            v2.RandomResizedCrop(
                (contract.height, contract.width), scale=(min_scale, 1.0), ratio=(0.75 * aspect, 1.333 * aspect), antialias=True
            ),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(rotation, fill=255)], p=0.5),
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0.03),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=blur),
            v2.RandomApply([v2.JPEG((30, 95))], p=jpeg),
            *normalise,
        ]
    )


def batch_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp or CutMix (one chosen per batch); ``None`` when both alphas are 0."""
    choices: list[v2.Transform] = []
    if mixup_alpha > 0:
        choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(choices) if choices else None


def train_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    transform: v2.Transform,
    generator: torch.Generator,
    sample_weights: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of augmented batches. With ``sample_weights`` indices are drawn with
    replacement in proportion to them (a class-balancing sampler); otherwise a shuffle.
    The last incomplete batch is dropped so BatchNorm never sees a batch of one."""
    n = len(labels)
    if sample_weights is not None:
        order = torch.multinomial(sample_weights, n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    for start in range(0, n - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield torch.stack([transform(images[i]) for i in idx.tolist()]), labels[idx]
