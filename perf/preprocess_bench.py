"""Benchmark: encoded photo -> model input tensor, per core, side by side in one run.

    python perf/preprocess_bench.py [--data ../shared/data/trashnet] [--images 400] [--repeat 3]

Rows (same photos, same machine, same run; best of ``--repeat`` passes):
  plain PIL   Image.open, exif_transpose, convert("RGB"), resize, normalise (no DCT downscale)
  decode/resize rows: where the time of one image goes
  wastesort   wastesort.preprocess.preprocess_bytes (Image.draft + the same steps): what the
              Triton ``preprocess`` model runs per image
  ...threads  the same on a thread pool of N threads (the model's decode pool), img/s in total

Without ``--data`` (or if the folder is missing) it uses synthetic 512x384 JPEGs and says so.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from wastesort.contract import PreprocessContract
from wastesort.labels import LABELS
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.preprocess import decode, draft_size, load_rgb, normalize, preprocess_bytes
from wastesort.shipped import ShippedModel


def plain_pil(data: bytes, contract: PreprocessContract) -> np.ndarray:
    """The textbook path: full-size decode, then resize."""
    img = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return normalize(np.asarray(img.resize((contract.width, contract.height), Image.Resampling.BILINEAR)), contract)


def load_photos(data_dir: Path | None, n: int) -> tuple[list[bytes], str]:
    if data_dir is not None and data_dir.is_dir():
        files = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        step = max(1, len(files) // n)
        return [p.read_bytes() for p in files[::step][:n]], f"{min(n, len(files))} real photos from {data_dir}"
    from wastesort.synthetic import make_image

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        make_image(LABELS[i % len(LABELS)], rng, (512, 384)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out, f"{n} SYNTHETIC 512x384 JPEGs (no --data folder found)"


def rate(fn: Callable[[bytes], object], photos: list[bytes], threads: int, repeat: int) -> float:
    """Best images/second over ``repeat`` passes."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        if threads == 1:
            for data in photos:
                fn(data)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(fn, photos))
        best = max(best, len(photos) / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--model", type=Path, default=ShippedModel().onnx, help="whose preprocessing contract to use")
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    contract = PreprocessContract.from_onnx(str(args.model))
    photos, what = load_photos(args.data, args.images)
    cores = len(os.sched_getaffinity(0))
    print(f"{what}; contract {contract.width}x{contract.height} {contract.resize}; {cores} cores available")
    plain = rate(lambda d: plain_pil(d, contract), photos, 1, args.repeat)
    size = draft_size(contract)
    rows = [
        ("plain PIL (no draft), 1 thread", plain),
        ("  of which: decode only, no draft", rate(lambda d: decode(d, None), photos, 1, args.repeat)),
        ("  wastesort: decode only, with draft", rate(lambda d: decode(d, size), photos, 1, args.repeat)),
        ("  wastesort: decode + resize (load_rgb)", rate(lambda d: load_rgb(d, contract), photos, 1, args.repeat)),
        ("wastesort preprocess_bytes, 1 thread", rate(lambda d: preprocess_bytes(d, contract), photos, 1, args.repeat)),
    ]
    if cores > 1:
        rows.append(
            (f"wastesort preprocess_bytes, {cores} threads", rate(lambda d: preprocess_bytes(d, contract), photos, cores, args.repeat))
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:8.0f} img/s   x{value / plain:4.2f} vs plain PIL")


if __name__ == "__main__":
    main()
