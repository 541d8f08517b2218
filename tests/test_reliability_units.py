"""Reliability pieces that need no server: the matrix's image makers, the soak's memory verdict,
the report tables."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from wastesort.reliability import images as im
from wastesort.reliability.probes import Outcome, matrix
from wastesort.reliability.report import BEGIN, END, matrix_table, soak_table, update_doc
from wastesort.reliability.soak import SoakResult


def _open(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_flat_png_is_a_valid_image_of_the_declared_size() -> None:
    img = _open(im.flat_png(300, 200))
    assert img.size == (300, 200) and img.mode == "L" and np.asarray(img).max() == 0
    assert _open(im.flat_png(64, 8, bit_depth=1)).mode == "1"


def test_orientation_tag_undoes_the_stored_rotation() -> None:
    upright = im.photo(size=(120, 80))
    for orientation in im.STORED_FOR_ORIENTATION:
        stored = _open(im.with_orientation(upright, orientation, "PNG"))
        assert stored.getexif()[0x0112] == orientation
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(stored)), np.asarray(upright))
        bare = _open(im.without_orientation(upright, orientation, "PNG"))
        assert 0x0112 not in bare.getexif()


def test_awkward_formats_are_what_they_say() -> None:
    photo = im.photo(size=(64, 48))
    rgba, flat = im.with_alpha(photo)
    assert _open(rgba).mode == "RGBA" and _open(flat).mode == "RGB"
    assert 0 < (np.asarray(_open(rgba))[..., 3] == 0).mean() < 1  # part transparent, part opaque
    assert _open(im.palette(photo)[0]).mode == "P"
    wide, narrow = im.sixteen_bit(photo)
    assert _open(wide).mode.startswith("I") and np.array_equal(np.asarray(_open(wide)) // 257, np.asarray(_open(narrow)))
    assert _open(im.cmyk_jpeg(photo)).mode == "CMYK"
    assert getattr(_open(im.animated_gif(photo)), "n_frames", 1) == 3


def test_probe_names_are_unique_and_expectations_known() -> None:
    probes = matrix()
    assert len({p.name for p in probes}) == len(probes)
    assert {p.expect for p in probes} == {"ok", "error"}
    assert all(p.match for p in probes if p.expect == "error")


def _soak(memory: list[tuple[float, float]]) -> SoakResult:
    result = SoakResult("http", 8, 2, duration_s=600.0, requests=10, images=80, latencies_ms=[10.0] * 9 + [100.0])
    result.memory = memory
    return result


def test_soak_memory_verdict_ignores_warm_up_and_catches_a_leak() -> None:
    flat = _soak([(t, 900.0 if t < 60 else 1000.0 + (t % 7) * 0.5) for t in range(0, 601, 5)])
    assert flat.memory_start_mb >= 1000.0 and flat.memory_holds and abs(flat.memory_slope_mb_per_min) < 0.5
    leak = _soak([(t, 1000.0 + t * 0.05) for t in range(0, 601, 5)])  # 3 MB/min: 24 MB over the measured 8 minutes
    assert not leak.memory_holds and 2.9 < leak.memory_slope_mb_per_min < 3.1
    assert _soak([(0.0, 1.0)]).memory_holds is False  # too few samples is not a pass
    summary = flat.summary()
    assert summary["p99_ms"] > summary["p50_ms"] == 10.0 and summary["throughput_img_s"] == round(80 / 600, 1)
    assert "| http | 8 | 2 | 10.0 min | 10 | 80 |" in soak_table([flat])


def test_report_tables_and_doc_update(tmp_path) -> None:
    probe = next(p for p in matrix() if p.name == "zero-bytes")
    outcomes = {
        "http": [Outcome(probe, "http", False, "400", "[request id: <id_unknown>] zero | bytes", 1.0, True, True)],
        "grpc": [Outcome(probe, "grpc", False, "StatusCode.INVALID_ARGUMENT", "zero bytes", 1.0, True, False, why="x")],
    }
    table = matrix_table(outcomes)
    assert "| zero bytes | ensemble | rejected | 400 | StatusCode.INVALID_ARGUMENT **FAIL**: x | zero \\| bytes | yes |" in table
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    assert update_doc(doc, "new table")
    assert doc.read_text() == f"intro\n{BEGIN}\nnew table\n{END}\noutro\n"
    doc.write_text("no markers")
    assert not update_doc(doc, "x")
