"""Benchmark: encoded photo -> model input tensor, per core, side by side in one run.

    python perf/preprocess_bench.py [--data ../shared/data/trashnet] [--batch 64] [--iters 20]

Every row is timed with :func:`wastesort.timing.time_interleaved` (round-robin, warm-up,
median), on the same photos in the same run:

* ``served``: ``preprocess_batch`` with the model's contract on a pool of one thread per core,
  each image written into its slot of the batch, as the Triton ``preprocess`` model runs a
  batch; img/s per core is the total over the cores.
* ``Pillow (previous decoder)``: the same with the contract's Pillow decoder and resize
  (``interpolation="bilinear"``, full-size decode unless a 1/2, 1/4, 1/8 draft stays above the
  target): what the service ran before.
* one-thread steps: where one image's time goes (decode, resize, normalise), so that a change
  can be judged by the step it speeds up;
* ``entropy-decoding floor``: the same decoder at libjpeg-turbo's smallest DCT scale (1/8), where
  the inverse DCT, upsampling and colour conversion shrink to almost nothing while the Huffman
  decoding of the whole file stays: no scaled decode of these files on this core can beat it.

Without ``--data`` (or if the folder is missing) it uses synthetic 512x384 JPEGs and says so.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wastesort.contract import PreprocessContract
from wastesort.labels import LABELS
from wastesort.machine import describe, one_line
from wastesort.paths import DEFAULT_TRASHNET
from wastesort.preprocess import decode_array, decode_for, draft_size, load_rgb, normalize, preprocess_batch, preprocess_bytes, resize
from wastesort.shipped import ShippedModel
from wastesort.timing import time_interleaved

#: A draft target every image exceeds: :func:`decode_array` then takes the smallest DCT scale.
SMALLEST_DRAFT = (1, 1)


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


def pooled(contract: PreprocessContract, photos: list[bytes], pool: ThreadPoolExecutor) -> Callable[[], object]:
    """One step: every photo through :func:`preprocess_batch` on ``pool``."""
    return lambda: preprocess_batch(photos, contract, pool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_TRASHNET)
    parser.add_argument("--model", type=Path, default=ShippedModel().onnx, help="whose preprocessing contract to use")
    parser.add_argument("--batch", type=int, default=64, help="photos per timed step")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, help="also write the table as Markdown to this file (e.g. perf/results/<host>/preprocess.md)")
    args = parser.parse_args(argv)
    contract = PreprocessContract.from_onnx(str(args.model))
    pillow = contract.with_pillow_decoder()
    photos, what = load_photos(args.data, args.batch)
    cores = len(os.sched_getaffinity(0))
    print(f"{one_line(describe())}\n{what}; contract {contract.width}x{contract.height} {contract.resize} {contract.interpolation}")
    size = draft_size(contract)
    decoded = [decode_for(d, contract, size) for d in photos]
    resized = np.stack([resize(a, contract) for a in decoded])
    with ThreadPoolExecutor(cores, thread_name_prefix="decode") as pool:
        rows: list[tuple[str, int, Callable[[], object]]] = [
            (f"served: preprocess_batch, {cores} threads", cores, pooled(contract, photos, pool)),
            (f"Pillow (previous decoder), {cores} threads", cores, pooled(pillow, photos, pool)),
            ("1 thread: preprocess_bytes", 1, lambda: [preprocess_bytes(d, contract) for d in photos]),
            ("1 thread:   decode (DCT-scaled)", 1, lambda: [decode_for(d, contract, size) for d in photos]),
            ("1 thread:   entropy-decoding floor (1/8 DCT scale)", 1, lambda: [decode_array(d, SMALLEST_DRAFT, 1.0) for d in photos]),
            ("1 thread:   resize", 1, lambda: [resize(a, contract) for a in decoded]),
            ("1 thread:   normalise", 1, lambda: normalize(resized, contract)),
            ("1 thread: Pillow decode + resize", 1, lambda: [load_rgb(d, pillow) for d in photos]),
        ]
        timings = time_interleaved([step for _, _, step in rows], len(photos), args.iters, warmup=2)
    width = max(len(name) for name, _, _ in rows)
    print(f"{'':<{width}}  {'img/s':>8}  {'per core':>8}  {'ms/img':>7}")
    table = [
        f"{one_line(describe())}; {what}; one interleaved run, median of {args.iters}.",
        "",
        "| path | img/s | per core | ms per image on one core |",
        "|---|---|---|---|",
    ]
    for (name, threads, _), t in zip(rows, timings, strict=True):
        print(f"{name:<{width}}  {t.img_s:8.0f}  {t.img_s / threads:8.0f}  {threads * 1000 / t.img_s:7.3f}")
        table.append(f"| {name.strip()} | {t.img_s:.0f} | {t.img_s / threads:.0f} | {threads * 1000 / t.img_s:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("# Preprocessing, bytes to tensor (`perf/preprocess_bench.py`)\n\n" + "\n".join(table) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
