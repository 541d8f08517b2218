"""A synthetic, learnable stand-in for TrashNet, for tests and the offline demo.

Each class has its own look (colour family, shape and texture), with random position, scale,
rotation, lighting and noise, drawn on a pale background like TrashNet's. Files are JPEG
encoded at varied sizes around TrashNet's 512x384, in the ImageFolder layout.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from wastesort.labels import LABELS


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)
    return r, g, b


def _draw_item(draw: ImageDraw.ImageDraw, cls: str, box: tuple[int, int, int, int], rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if cls == "cardboard":  # brown box with corrugation stripes
        draw.rectangle(box, fill=_jitter(rng, (170, 120, 70)))
        for i in range(0, h, max(3, h // 14)):
            draw.line((x0, y0 + i, x1, y0 + i), fill=_jitter(rng, (130, 90, 50)), width=2)
    elif cls == "glass":  # green translucent bottle: ellipse body, narrow neck, highlight
        draw.ellipse((x0, y0 + h // 4, x1, y1), fill=_jitter(rng, (60, 150, 90)))
        draw.rectangle((x0 + w * 2 // 5, y0, x1 - w * 2 // 5, y0 + h // 3), fill=_jitter(rng, (60, 150, 90)))
        draw.ellipse((x0 + w // 5, y0 + h // 3, x0 + w // 3, y1 - h // 4), fill=(225, 245, 230))
    elif cls == "metal":  # grey can with bright vertical specular bands
        draw.rectangle(box, fill=_jitter(rng, (150, 150, 160), 15))
        for k in range(3):
            cx = x0 + int(w * (0.2 + 0.3 * k))
            draw.rectangle((cx, y0, cx + max(2, w // 14), y1), fill=_jitter(rng, (240, 240, 245), 10))
    elif cls == "paper":  # white sheet with dark text lines
        draw.rectangle(box, fill=_jitter(rng, (245, 245, 240), 8), outline=(200, 200, 200))
        for i in range(y0 + h // 8, y1 - h // 10, max(4, h // 12)):
            draw.line((x0 + w // 10, i, x1 - int(w * rng.uniform(0.1, 0.4)), i), fill=(40, 40, 40), width=2)
    elif cls == "plastic":  # blue bottle with a red cap
        draw.rounded_rectangle((x0 + w // 5, y0 + h // 6, x1 - w // 5, y1), radius=max(2, w // 6), fill=_jitter(rng, (60, 110, 220)))
        draw.rectangle((x0 + w * 2 // 5, y0, x1 - w * 2 // 5, y0 + h // 6), fill=_jitter(rng, (220, 40, 40)))
    else:  # trash: clutter of small multi-coloured blobs
        for _ in range(int(rng.integers(12, 24))):
            cx, cy = rng.integers(x0, max(x0 + 1, x1)), rng.integers(y0, max(y0 + 1, y1))
            r = int(rng.integers(4, max(5, min(w, h) // 6)))
            colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)


def make_image(cls: str, rng: np.random.Generator, size: tuple[int, int] = (512, 384)) -> Image.Image:
    """One synthetic photo of class ``cls`` at ``size`` (width, height), RGB."""
    width, height = size
    background = _jitter(rng, (225, 222, 215), 20)
    img = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(img)
    scale = rng.uniform(0.45, 0.8)
    w, h = int(width * scale * rng.uniform(0.6, 0.9)), int(height * scale)
    x0 = int(rng.integers(0, max(1, width - w)))
    y0 = int(rng.integers(0, max(1, height - h)))
    _draw_item(draw, cls, (x0, y0, x0 + w, y0 + h), rng)
    img = img.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR, fillcolor=background)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 1.2))))
    arr = np.asarray(img, dtype=np.float32) * rng.uniform(0.8, 1.1)
    arr += rng.normal(0, 6, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def generate(root: str | Path, per_class: int = 40, seed: int = 0, labels: tuple[str, ...] = LABELS) -> Path:
    """Write ``per_class`` JPEGs per class under ``root/<class>/`` and return ``root``.

    Sizes vary between about 0.5x and 1.1x of 512x384, in landscape and portrait.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in labels:
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = rng.uniform(0.5, 1.1)
            size = (int(512 * s), int(384 * s)) if rng.random() < 0.8 else (int(384 * s), int(512 * s))
            make_image(cls, rng, size).save(folder / f"{cls}{i:04d}.jpg", quality=int(rng.integers(80, 96)))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write <class>/<image>.jpg into")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.out, args.per_class, args.seed)
    total = args.per_class * len(LABELS)
    print(f"wrote {total} SYNTHETIC images ({args.per_class} per class) to {args.out}")


if __name__ == "__main__":
    main()
