"""Encoded test images for the bad-input matrix: every awkward thing a camera, a user or an
attacker may send. Each function returns encoded bytes; nothing here touches a server.

All pictures are synthetic (``wastesort.synthetic``), so the matrix runs on a fresh clone.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from wastesort.synthetic import make_image

#: EXIF tag 0x0112 (Orientation) -> the transpose that turns the upright picture into the
#: stored pixels (a viewer applies the inverse to show it upright).
STORED_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def photo(label: str = "plastic", size: tuple[int, int] = (512, 384), seed: int = 0) -> Image.Image:
    """A synthetic RGB photo of ``label`` at ``size`` (width, height)."""
    return make_image(label, np.random.default_rng(seed), size)


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """PIL image -> encoded bytes (``params`` go to ``Image.save``)."""
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def with_orientation(upright: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """The picture a phone writes when held sideways: pixels stored rotated, and the EXIF
    Orientation tag saying how to turn them back. Decoded correctly, it is ``upright``."""
    stored = upright.transpose(STORED_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    return encode(stored, fmt, **params)


def without_orientation(upright: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    """The same stored pixels as :func:`with_orientation` with the tag dropped: what a decoder
    that ignores EXIF would see (the control that shows the orientation probe has power)."""
    params: dict[str, object] = {"quality": 95} if fmt == "JPEG" else {}
    return encode(upright.transpose(STORED_FOR_ORIENTATION[orientation]), fmt, **params)


def with_alpha(img: Image.Image) -> tuple[bytes, bytes]:
    """(RGBA PNG whose background is transparent, RGB PNG of it composited on white)."""
    arr = np.asarray(img)
    background = arr[0, 0].astype(int)
    alpha = np.where(np.abs(arr.astype(int) - background).sum(axis=2) > 60, 255, 0).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([arr, alpha]), "RGBA")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return encode(rgba, "PNG"), encode(Image.alpha_composite(white, rgba).convert("RGB"), "PNG")


def palette(img: Image.Image) -> tuple[bytes, bytes]:
    """(palette PNG, RGB PNG of exactly the palette image's colours)."""
    pal = img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(pal, "PNG"), encode(pal.convert("RGB"), "PNG")


def sixteen_bit(img: Image.Image) -> tuple[bytes, bytes]:
    """(16-bit greyscale PNG, 8-bit greyscale PNG of the same picture). Each 8-bit level ``v``
    is stored as ``v * 257``, so a correct decoder gives back exactly the 8-bit picture."""
    grey = np.asarray(img.convert("L"))
    wide = Image.fromarray(grey.astype(np.uint16) * 257)
    return encode(wide, "PNG"), encode(Image.fromarray(grey), "PNG")


def cmyk_jpeg(img: Image.Image) -> bytes:
    """A CMYK JPEG (print workflows and some scanners write these)."""
    return encode(img.convert("CMYK"), "JPEG", quality=95)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first ``keep`` of the bytes: an upload cut short."""
    return data[: int(len(data) * keep)]


def corrupt_jpeg_header(data: bytes) -> bytes:
    """A JPEG whose frame header (SOF0: size and components) is overwritten with garbage."""
    at = data.index(b"\xff\xc0")
    return data[: at + 2] + b"\x00\x11\x07" + b"\xee" * 16 + data[at + 21 :]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def flat_png(width: int, height: int, bit_depth: int = 8) -> bytes:
    """A valid greyscale PNG of one flat colour, written row by row through zlib so that
    enormous sizes cost little: a 20000x20000 1-bit image is about 50 kB on the wire and 400
    megapixels (gigabytes as RGB) once decoded. The decompression bomb."""
    row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)
    squeeze = zlib.compressobj(9)
    parts = [squeeze.compress(row) for _ in range(height)]
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def animated_gif(img: Image.Image, frames: int = 3) -> bytes:
    """An animated GIF (the model sees the first frame)."""
    seq = [img.rotate(20 * i) for i in range(frames)]
    return encode(seq[0], "GIF", save_all=True, append_images=seq[1:], duration=100, loop=0)


def photo_files(data: Path, out: Path, n: int) -> tuple[list[Path], str]:
    """Up to ``n`` photo files: real ones from ``data`` (spread over the classes), else synthetic."""
    real = sorted(data.rglob("*.jpg")) if data.is_dir() else []
    if real:
        step = max(1, len(real) // n)
        return real[::step][:n], f"{min(n, len(real))} real TrashNet photos from {data}"
    folder = out / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:04d}.jpg"
        path.write_bytes(encode(photo(("glass", "metal", "paper", "plastic")[i % 4], (512, 384), seed=i), "JPEG", quality=90))
        paths.append(path)
    return paths, f"{n} SYNTHETIC photos (no TrashNet at {data})"
