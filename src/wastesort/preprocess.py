"""Encoded image bytes -> normalised CHW float32 array, per :class:`PreprocessContract`.

Uses PIL and NumPy only (no torch), so the Triton preprocessing model, INT8 calibration,
training evaluation and the client all run exactly this code.

Speed: JPEGs are decoded with ``Image.draft`` (DCT-domain downscale by 1/2, 1/4 or 1/8 to
the smallest size still at least as large as the resize target), which is the main reason
this runs at several hundred TrashNet photos per second per core.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from wastesort.contract import PreprocessContract

#: Default decompression-bomb limit (pixels). TrashNet photos are 512x384 = 0.2 MP; a 12 MP
#: phone photo passes.
DEFAULT_MAX_PIXELS = 40_000_000
#: Default limit on one encoded image (bytes): refused before PIL sees it. A 12 MP phone JPEG
#: is 3-6 MB.
DEFAULT_MAX_BYTES = 20_000_000

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image, or break a size limit. The message says why."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparency is composited on white; 16/32-bit and float
    greyscale are rescaled to 8 bits rather than clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode(
    data: bytes,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image:
    """Decode encoded bytes to an upright RGB PIL image.

    Args:
        data: encoded JPEG/PNG (or any format PIL reads) bytes.
        draft_size: (width, height) the caller will resize to; JPEGs are DCT-downscaled to
            the smallest power-of-two reduction still at least this large. ``None``: full size.
        max_pixels: images whose header declares more pixels are refused before decoding
            (decompression bombs: a few hundred kB of PNG can declare gigabytes of pixels).
        max_bytes: longer inputs are refused before PIL reads them.

    Raises:
        ImageDecodeError: empty, undecodable, truncated or oversized input.
    """
    if not data:
        raise ImageDecodeError("empty input: zero bytes")
    if len(data) > max_bytes:
        raise ImageDecodeError(f"encoded image is {len(data)} bytes, above the limit of {max_bytes}")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # PIL's own guard (2x Image.MAX_IMAGE_PIXELS) fired first
        declared = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{declared.group(1)} pixels" if declared else "more pixels than PIL allows"
        raise ImageDecodeError(f"image declares {size}, above the limit of {min(max_pixels, 2 * Image.MAX_IMAGE_PIXELS)}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(f"not an image in any format PIL reads ({len(data)} bytes starting {data[:8]!r})") from exc
    except Exception as exc:  # PIL raises several types for damaged headers
        raise ImageDecodeError(f"not a decodable image ({len(data)} bytes): {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageDecodeError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
    try:
        if draft_size is not None and img.format == "JPEG":
            target = draft_size
            if img.getexif().get(0x0112) in _ROTATING_ORIENTATIONS:
                target = (draft_size[1], draft_size[0])
            img.draft("RGB", target)
        img.load()
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except Exception as exc:
        raise ImageDecodeError(f"image data is corrupt or truncated: {exc}") from exc


def resize(img: Image.Image, contract: PreprocessContract) -> Image.Image:
    """Apply the contract's resize policy to an RGB image; returns ``width x height``."""
    resample = _RESAMPLE[contract.interpolation]
    if contract.resize == "squash":
        return img.resize((contract.width, contract.height), resample)
    scale = max(contract.width, contract.height) / contract.crop_fraction / min(img.size)
    new_w, new_h = max(contract.width, round(img.width * scale)), max(contract.height, round(img.height * scale))
    img = img.resize((new_w, new_h), resample)
    left, top = (new_w - contract.width) // 2, (new_h - contract.height) // 2
    return img.crop((left, top, left + contract.width, top + contract.height))


def draft_size(contract: PreprocessContract) -> tuple[int, int]:
    """Smallest (width, height) a decode must keep for :func:`resize` to see full detail."""
    if contract.resize == "squash":
        return contract.width, contract.height
    side = round(max(contract.width, contract.height) / contract.crop_fraction)
    return side, side


def normalize(rgb: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` or a batch ``(N, H, W, 3)`` -> float32 ``(3, H, W)`` or
    ``(N, 3, H, W)``, ``(x / 255 - mean) / std``."""
    scale, shift = _affine(contract)
    # transpose the uint8 pixels (a quarter of the bytes), then one float pass in place:
    # about 3x faster than normalising HWC floats and transposing those
    out = np.ascontiguousarray(np.moveaxis(rgb, -1, -3)).astype(np.float32)
    out *= scale
    out += shift
    return out


@functools.lru_cache(maxsize=16)
def _affine(contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, shift)`` with ``x * scale + shift == (x / 255 - mean) / std``, shaped (3, 1, 1)."""
    std = np.asarray(contract.std, dtype=np.float64)
    scale = 1.0 / (255.0 * std)
    shift = -np.asarray(contract.mean, dtype=np.float64) / std
    return scale.astype(np.float32).reshape(3, 1, 1), shift.astype(np.float32).reshape(3, 1, 1)


def load_rgb(
    data: bytes, contract: PreprocessContract, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Encoded bytes -> resized uint8 HWC RGB array (``height x width x 3``), before normalising."""
    img = decode(data, draft_size(contract), max_pixels, max_bytes)
    return np.asarray(resize(img, contract), dtype=np.uint8)


def preprocess_bytes(
    data: bytes, contract: PreprocessContract, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Encoded bytes -> the model's input for one image: float32 ``(3, height, width)``."""
    return normalize(load_rgb(data, contract, max_pixels, max_bytes), contract)


def preprocess_file(path: str | Path, contract: PreprocessContract) -> np.ndarray:
    """:func:`preprocess_bytes` on a file's contents."""
    with open(path, "rb") as fh:
        return preprocess_bytes(fh.read(), contract)


def preprocess_files(paths: Sequence[str | Path], contract: PreprocessContract, desc: str = "preprocess") -> np.ndarray:
    """Many files -> float32 ``(N, 3, height, width)``, two decode threads (PIL releases the
    GIL), with a progress bar on a terminal."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        arrays = list(tqdm(pool.map(lambda p: preprocess_file(p, contract), paths), total=len(paths), desc=desc, leave=False, disable=None))
    return np.stack(arrays) if arrays else np.zeros((0, 3, contract.height, contract.width), np.float32)
