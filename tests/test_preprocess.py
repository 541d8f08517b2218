"""The preprocessing contract and the PIL/NumPy preprocessing every role shares."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from wastesort.contract import PreprocessContract
from wastesort.paths import REPO_ROOT
from wastesort.preprocess import (
    ImageDecodeError,
    _has_exif_segment,
    _jpeg_orientation,
    decode,
    decode_array,
    load_rgb,
    normalize,
    preprocess_bytes,
)


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _half_and_half(size=(400, 300)) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:, : size[0] // 2] = (255, 0, 0)
    arr[:, size[0] // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


def test_metadata_round_trip() -> None:
    c = PreprocessContract(height=160, width=128, resize="center_crop", crop_fraction=0.9)
    meta = c.to_metadata()
    assert set(meta) == {"labels", "preprocessing"} and all(isinstance(v, str) for v in meta.values())
    assert PreprocessContract.from_metadata(meta) == c
    with pytest.raises(KeyError, match="labels"):
        PreprocessContract.from_metadata({"preprocessing": meta["preprocessing"]})


def test_contract_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        PreprocessContract(resize="stretch")
    with pytest.raises(ValueError):
        PreprocessContract(crop_fraction=0)


@pytest.mark.parametrize("policy", ["squash", "center_crop"])
def test_output_shape_dtype_and_normalisation(policy: str) -> None:
    c = PreprocessContract(height=96, width=128, resize=policy)
    x = preprocess_bytes(_encode(_half_and_half()), c)
    assert x.shape == (3, 96, 128) and x.dtype == np.float32
    red = (np.array([1.0, 0.0, 0.0]) - np.array(c.mean)) / np.array(c.std)
    assert np.allclose(x[:, 48, 5], red, atol=0.1)  # left edge stays red


def test_normalize_matches_formula() -> None:
    c = PreprocessContract()
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    expected = ((rgb / 255.0 - np.array(c.mean)) / np.array(c.std)).transpose(2, 0, 1)
    assert np.allclose(normalize(rgb, c), expected, atol=1e-5)


def test_exif_rotation_is_applied() -> None:
    img = _half_and_half()  # landscape; red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewer must rotate 90 degrees clockwise
    img = decode(_encode(img, exif=exif.tobytes()), draft_size=(100, 100))
    assert img.width < img.height  # upright is portrait
    top, bottom = np.asarray(img)[5, img.width // 2], np.asarray(img)[-5, img.width // 2]
    assert top[0] > 200 and bottom[2] > 200  # red ends on top after a clockwise turn


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (64, 48), 128),
        lambda: Image.new("RGB", (64, 48), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE),
        lambda: Image.new("RGBA", (64, 48), (255, 0, 0, 0)),
        lambda: Image.new("CMYK", (64, 48), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((48, 64), 65535 // 2, np.uint16)),
    ],
    ids=["L", "P", "RGBA", "CMYK", "I16"],
)
def test_any_mode_becomes_rgb(make) -> None:
    img = make()
    fmt = "JPEG" if img.mode in ("L", "CMYK") else "PNG"
    out = decode(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (64, 48)
    px = np.asarray(out)[10, 10].astype(int)
    if img.mode == "RGBA":
        assert (px == 255).all()  # fully transparent composited on white
    if img.mode == "I;16":
        assert 120 <= px[0] <= 135  # rescaled from 16 bits, not clipped to white


def test_draft_decode_is_close_to_full_decode() -> None:
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize((1024, 768), Image.Resampling.BICUBIC)
    data = _encode(base, quality=95)
    c = PreprocessContract(height=128, width=128)
    fast = load_rgb(data, c).astype(float)
    full = np.asarray(decode(data).resize((128, 128), Image.Resampling.BILINEAR), dtype=float)
    assert np.abs(fast - full).mean() < 6.0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "zero bytes"),
        (b"not an image at all", "not an image in any format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "not a decodable|not an image|corrupt"),
    ],
)
def test_bad_bytes_raise_clear_errors(data: bytes, match: str) -> None:
    with pytest.raises(ImageDecodeError, match=match):
        preprocess_bytes(data, PreprocessContract())


def test_truncated_jpeg_and_pixel_limit() -> None:
    data = _encode(_half_and_half((800, 600)))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="above the limit"):
        decode(data, max_pixels=1000)


def test_byte_limit_and_decompression_bomb_are_refused_before_decoding() -> None:
    from wastesort.reliability.images import flat_png

    data = _encode(_half_and_half((80, 60)))
    with pytest.raises(ImageDecodeError, match=f"{len(data)} bytes, above the limit of {len(data) - 1}"):
        decode(data, max_bytes=len(data) - 1)
    assert decode(data, max_bytes=len(data)).size == (80, 60)
    bomb = flat_png(20000, 20000, bit_depth=1)  # 400 MP declared, about 50 kB sent
    assert len(bomb) < 100_000
    for limit in (1_000_000, 10**12):  # ours, then PIL's own guard (which fires first above 2x its limit)
        with pytest.raises(ImageDecodeError, match="400000000 pixels.*above the limit"):
            decode(bomb, max_pixels=limit)


# --- the libjpeg-turbo decoder (contracts with ``interpolation="area"``) ---


def _asymmetric(size=(120, 80)) -> Image.Image:
    """A landscape image whose every flip and rotation looks different (a bright corner and
    a coloured band)."""
    arr = np.full((size[1], size[0], 3), 40, np.uint8)
    arr[: size[1] // 3, : size[0] // 4] = (250, 250, 250)
    arr[:, -size[0] // 5 :] = (0, 0, 230)
    return Image.fromarray(arr)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_decoder_applies_exif_orientation_like_pillow(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(_asymmetric(), quality=95, exif=exif.tobytes())
    fast = decode_array(data, (120, 120), floor=1.0)
    upright = np.asarray(decode(data))
    assert fast.shape == upright.shape and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - upright).mean() < 1.0


def test_exif_segment_is_found_by_walking_the_header_segments() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = _asymmetric()
    # Exif after the JFIF, ICC (APP2) and comment segments; a comment that merely contains
    # the Exif signature is not an Exif segment
    with_exif = _encode(img, exif=exif.tobytes(), icc_profile=b"\0" * 300, comment=b"Exif\x00\x00 in a comment")
    without = _encode(img, icc_profile=b"\0" * 300, comment=b"Exif\x00\x00 in a comment")
    assert _has_exif_segment(with_exif) and _jpeg_orientation(with_exif) == 6
    assert not _has_exif_segment(without) and _jpeg_orientation(without) is None
    assert not _has_exif_segment(with_exif[:3])  # truncated header: no Exif, no exception
    assert not _has_exif_segment(b"\xff\xd8\xff\xe1\xff\xff")  # a length past the end


@pytest.mark.parametrize(
    ("size", "floor", "expected"),
    [
        ((384, 512), 0.75, (256, 192)),  # a TrashNet photo for 224x224: 1/2 (192 >= 0.75 * 224)
        ((384, 512), 1.0, (512, 384)),  # 1/2 would be below the target: full size
        ((4000, 3000), 1.0, (375, 500)),  # a phone photo: 1/8 stays above 224
        ((100, 60), 0.75, (60, 100)),  # smaller than the target: never reduced
    ],
)
def test_fast_decoder_reduces_by_powers_of_two_down_to_the_floor(size, floor, expected) -> None:
    data = _encode(Image.new("RGB", size, (90, 120, 150)), quality=80)
    assert decode_array(data, (224, 224), floor).shape == (*expected, 3)


def test_fast_decoder_converts_cmyk_and_keeps_pillows_errors() -> None:
    cmyk = _encode(Image.new("CMYK", (64, 48), (0, 255, 255, 0)))  # red
    rgb = decode_array(cmyk, (64, 48), 1.0)
    assert rgb.shape == (48, 64, 3) and np.abs(rgb[10, 10].astype(int) - (255, 0, 0)).max() <= 3
    data = _encode(_half_and_half((800, 600)))
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_array(data[: len(data) // 2], (224, 224), 0.75)
    with pytest.raises(ImageDecodeError, match="above the limit of 1000"):
        decode_array(data, (224, 224), 0.75, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_array(b"\xff\xd8\xff" + b"garbage" * 10, (224, 224), 0.75)


@pytest.mark.parametrize("policy", ["squash", "center_crop"])
def test_area_contract_agrees_with_pillow_bilinear(policy: str) -> None:
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).resize((512, 384), Image.Resampling.BICUBIC)
    data = _encode(base, quality=95)
    fast = load_rgb(data, PreprocessContract(height=96, width=128, resize=policy))
    slow = load_rgb(data, PreprocessContract(height=96, width=128, resize=policy, interpolation="bilinear", jpeg_draft_floor=1.0))
    assert fast.shape == slow.shape == (96, 128, 3)
    assert np.abs(fast.astype(int) - slow).mean() < 4.0


def test_contracts_without_a_draft_floor_keep_full_size_decoding() -> None:
    import json

    meta = PreprocessContract(interpolation="bilinear").to_metadata()
    body = json.loads(meta["preprocessing"])
    del body["jpeg_draft_floor"]  # as written before the field existed
    old = PreprocessContract.from_metadata({**meta, "preprocessing": json.dumps(body)})
    assert old.jpeg_draft_floor == 1.0 and old.interpolation == "bilinear"
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessContract(interpolation="lanczos")
    with pytest.raises(ValueError, match="jpeg_draft_floor"):
        PreprocessContract(jpeg_draft_floor=0.0)


def test_normalize_batch_equals_each_image() -> None:
    c = PreprocessContract()
    batch = np.random.default_rng(2).integers(0, 256, (3, 16, 12, 3), dtype=np.uint8)
    out = normalize(batch, c)
    assert out.shape == (3, 3, 16, 12) and out.dtype == np.float32
    assert all(np.array_equal(out[i], normalize(batch[i], c)) for i in range(3))


def test_preprocess_batch_fills_slots_and_reports_each_error() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from wastesort.preprocess import preprocess_batch

    c = PreprocessContract(height=32, width=48)
    good = [_encode(_asymmetric()), _encode(_half_and_half(), "PNG")]
    with ThreadPoolExecutor(2) as pool:
        batch, errors = preprocess_batch([good[0], b"not an image", good[1]], c, pool)
    assert batch.shape == (3, 3, 32, 48) and batch.dtype == np.float32
    assert errors[0] is None and errors[2] is None and isinstance(errors[1], ImageDecodeError)
    np.testing.assert_array_equal(batch[0], preprocess_bytes(good[0], c))
    np.testing.assert_array_equal(batch[2], preprocess_bytes(good[1], c))


def test_preprocess_bench_times_every_step_down_to_the_entropy_decoding_floor(tmp_path, capsys) -> None:
    """``perf/preprocess_bench.py`` runs each row (synthetic photos without ``--data``), and its
    floor row decodes at libjpeg-turbo's smallest DCT scale, 1/8."""
    sys.path.insert(0, str(REPO_ROOT / "perf"))
    import preprocess_bench

    data = _encode(Image.new("RGB", (384, 512), (90, 120, 150)), quality=80)
    assert decode_array(data, preprocess_bench.SMALLEST_DRAFT, 1.0).shape == (64, 48, 3)
    preprocess_bench.main(["--data", str(tmp_path / "absent"), "--batch", "4", "--iters", "1"])
    out = capsys.readouterr().out
    assert "4 SYNTHETIC 512x384 JPEGs" in out
    rows = [line for line in out.splitlines() if line.startswith(("served", "Pillow", "1 thread"))]
    assert len(rows) == 8 and any("entropy-decoding floor" in r for r in rows)
    assert all(float(r.split()[-3]) > 0 for r in rows)
