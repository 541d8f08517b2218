"""A simulated site: TrashNet items cut from their white board and composited on one fixed,
realistic-looking floor (wooden planks under warm, uneven light), smaller and off-centre, with a
soft shadow, camera blur and stronger JPEG compression. No such photo was ever trained on.

    python experiments/simulated_site/make_site.py --data ../shared/data/trashnet --out /tmp/site

Writes an ImageFolder per split of the committed manifest: ``OUT/<split>/<class>/<file>.jpg``
(train and val photos by default: the site's own photos must not be TrashNet's test photos, which
stay the clean measure of forgetting). Photos whose board the mask cannot find are skipped and
counted.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from wastesort.paths import DEFAULT_TRASHNET
from wastesort.preprocess import decode
from wastesort.shipped import ShippedModel
from wastesort.training.background import foreground_mask

SEED = 20261203
#: The floor is drawn once, larger than any photo, and each photo sees a random crop of it.
FLOOR_SIDE = 1400


def floor(seed: int = SEED) -> np.ndarray:
    """uint8 ``(FLOOR_SIDE, FLOOR_SIDE, 3)``: wooden planks (a tone per plank, grain along the
    plank, dark seams) under a warm light that falls off across the floor."""
    rng = np.random.default_rng(seed)
    side = FLOOR_SIDE
    plank = 110
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32)
    row = (ys // plank).astype(int)
    offset = rng.integers(0, 400, size=row.max() + 2)[row]
    tone = rng.uniform(0.8, 1.15, size=row.max() + 2)[row]
    grain_small = rng.normal(0, 1, (side // 8, side // 64 + 2)).astype(np.float32)
    grain = F.interpolate(torch.from_numpy(grain_small)[None, None], size=(side, side), mode="bicubic", align_corners=False)[0, 0].numpy()
    rings = np.sin((xs + offset) / 23.0 + 3.0 * grain) * 0.5 + 0.5
    base = np.array([150, 104, 62], np.float32)  # oak
    wood = base * (0.82 + 0.22 * rings[..., None]) * tone[..., None]
    seam = (ys % plank < 3) | (((xs + offset) % 520) < 3)
    wood[seam] *= 0.45
    light = 1.05 - 0.35 * np.hypot((xs - side * 0.3) / side, (ys - side * 0.2) / side)[..., None]
    warm = np.array([1.06, 1.0, 0.88], np.float32)
    return np.clip(wood * light * warm + rng.normal(0, 4, wood.shape), 0, 255).astype(np.uint8)


def composite(photo: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The item of ``photo`` (uint8 HxWx3) on a crop of ``background``: scaled to 55-85% of the
    frame, placed off-centre, a soft shadow below-right, a little blur, the site's light."""
    image = torch.from_numpy(photo.copy()).permute(2, 0, 1).contiguous()
    mask = foreground_mask(image)
    if mask is None:
        return None
    h, w = photo.shape[:2]
    y0, x0 = rng.integers(0, FLOOR_SIDE - h), rng.integers(0, FLOOR_SIDE - w)
    out = background[y0 : y0 + h, x0 : x0 + w].astype(np.float32)
    scale = rng.uniform(0.55, 0.85)
    sh, sw = max(8, int(h * scale)), max(8, int(w * scale))
    item = np.asarray(Image.fromarray(photo).resize((sw, sh), Image.BICUBIC), np.float32)
    alpha = np.asarray(Image.fromarray((mask.numpy() * 255).astype(np.uint8)).resize((sw, sh), Image.BILINEAR), np.float32) / 255
    top, left = rng.integers(0, h - sh + 1), rng.integers(0, w - sw + 1)
    shadow = np.zeros((h, w), np.float32)
    dy, dx = int(0.04 * h), int(0.05 * w)
    rows, cols = max(0, min(sh, h - top - dy)), max(0, min(sw, w - left - dx))
    shadow[top + dy : top + dy + rows, left + dx : left + dx + cols] = alpha[:rows, :cols]
    shadow = np.asarray(Image.fromarray((shadow * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(9)), np.float32) / 255
    out *= 1 - 0.45 * shadow[..., None]
    region = out[top : top + sh, left : left + sw]
    lit = item * np.array([1.04, 1.0, 0.9], np.float32) * 0.92  # the site's warmer, dimmer light on the item
    out[top : top + sh, left : left + sw] = region * (1 - alpha[..., None]) + lit * alpha[..., None]
    blurred = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.4)))
    return np.asarray(blurred)


def make_site(data: Path, out: Path, splits: tuple[str, ...] = ("train", "val"), seed: int = SEED) -> dict:
    """Write the site's photos for ``splits`` of the committed manifest; returns counts."""
    model = ShippedModel()
    background = floor(seed)
    rng = np.random.default_rng(seed + 1)
    counts: dict = {}
    for split in splits:
        written = skipped = 0
        for sample in model.split(split, data):
            photo = np.asarray(decode(sample.path.read_bytes()), np.uint8)
            site = composite(photo, background, rng)
            if site is None:
                skipped += 1
                continue
            target = out / split / sample.path.parent.name / (sample.path.stem + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            buffer = io.BytesIO()
            Image.fromarray(site).save(buffer, "JPEG", quality=80)
            target.write_bytes(buffer.getvalue())
            written += 1
        counts[split] = {"written": written, "skipped (no board found)": skipped}
    (out / "site.json").write_text(json.dumps({"seed": seed, "source": str(data), "counts": counts}, indent=2))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    args = parser.parse_args(argv)
    print(json.dumps(make_site(args.data, args.out, tuple(args.splits)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
