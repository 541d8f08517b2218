"""The bad-input matrix's image makers produce what they claim (no server needed)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from wastesort.reliability import images as im
from wastesort.reliability.probes import matrix


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
