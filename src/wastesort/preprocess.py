"""Encoded image bytes -> normalised CHW float32 array, per :class:`PreprocessContract`.

No torch: the Triton preprocessing model, INT8 calibration, training evaluation and the
client all run exactly this code.

Two decoders, chosen by the contract's ``interpolation``:

* ``area`` (the default for new models): JPEGs go straight to libjpeg-turbo through
  ``simplejpeg`` with DCT-domain downscaling by 1/2, 1/4 or 1/8 down to ``jpeg_draft_floor``
  of the target size, EXIF orientation applied on the array; other formats (and JPEGs
  ``simplejpeg`` cannot convert, such as CMYK) through Pillow. OpenCV's ``INTER_AREA``
  resizes. Over 1000 TrashNet photos per second per core (``perf/preprocess_bench.py``).
* ``bilinear`` / ``bicubic`` (older models): Pillow decodes (``Image.draft`` only when the
  reduction stays at least as large as the target) and resizes, as those models were
  trained.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
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
_OPENCV_INTERPOLATION = {"area": cv2.INTER_AREA}
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112
#: libjpeg-turbo's SIMD-accelerated DCT scales, largest first (its other M/8 scales run
#: slower than a full decode)
_DCT_SCALES = (1, 2, 4, 8)
_JPEG_MAGIC = b"\xff\xd8\xff"
#: JPEG markers: start of scan (entropy-coded data follows), APP1 (Exif), the range of markers
#: that may come before the scan (SOFn, DHT, DQT, DRI, APPn, COM), and within it those that
#: carry no length (RSTn, SOI, EOI)
_SOS, _APP1 = 0xDA, 0xE1
_HEADER_MARKERS = (0xC0, 0xFE)
_STANDALONE_MARKERS = (0xD0, 0xD9)
_EXIF_HEADER = b"Exif\x00\x00"

# the preprocessing pools give each image one thread; OpenCV must not start its own
cv2.setNumThreads(1)


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


def _orient(rgb: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an HWC array, as ``ImageOps.exif_transpose`` does."""
    transforms = {
        2: lambda a: a[:, ::-1],  # mirrored
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # flipped
        5: lambda a: a.transpose(1, 0, 2),  # transposed
        6: lambda a: np.rot90(a, -1),  # rotated 90 clockwise to view
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # transversed
        8: lambda a: np.rot90(a, 1),  # rotated 90 counter-clockwise to view
    }
    return np.ascontiguousarray(transforms[orientation](rgb)) if orientation in transforms else rgb


def _has_exif_segment(data: bytes) -> bool:
    """Whether a JPEG's header segments (those before the scan) include an ``APP1 Exif`` one.

    Walks the segment lengths from the start of the file, a few steps for a camera photo,
    instead of searching the whole file (a tenth of the image's decode time before)."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if _STANDALONE_MARKERS[0] <= marker <= _STANDALONE_MARKERS[1]:  # RSTn, SOI, EOI: no length
            pos += 2
            continue
        if marker == _SOS or not _HEADER_MARKERS[0] <= marker <= _HEADER_MARKERS[1]:
            return False
        if marker == _APP1 and data[pos + 4 : pos + 10] == _EXIF_HEADER:
            return True
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG, read only when it has an Exif segment."""
    if not _has_exif_segment(data):
        return None
    return Image.open(io.BytesIO(data)).getexif().get(_EXIF_ORIENTATION)


def _dct_scale(width: int, height: int, target: tuple[int, int], floor: float) -> int:
    """Largest denominator in :data:`_DCT_SCALES` keeping both sides >= ``floor * target``."""
    need_w, need_h = floor * target[0], floor * target[1]
    return max(d for d in _DCT_SCALES if d == 1 or (-(-width // d) >= need_w and -(-height // d) >= need_h))


def decode_array(
    data: bytes,
    draft_size: tuple[int, int],
    floor: float,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> np.ndarray:
    """Encoded bytes -> upright uint8 RGB ``(H, W, 3)``, JPEGs DCT-downscaled by libjpeg-turbo.

    ``draft_size`` is the (width, height) the caller resizes to, in display orientation; a JPEG
    is reduced by 1/2, 1/4 or 1/8 while both sides stay at least ``floor`` times it. Limits
    and errors as :func:`decode`; anything ``simplejpeg`` cannot decode goes through it.
    """
    if data[:3] == _JPEG_MAGIC and len(data) <= max_bytes:
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            orientation = _jpeg_orientation(data)
        except Exception:  # noqa: BLE001 - damaged header: decode() explains it
            return np.asarray(decode(data, draft_size, max_pixels, max_bytes))
        if width * height > max_pixels:
            raise ImageDecodeError(f"image is {width}x{height} = {width * height} pixels, above the limit of {max_pixels}")
        target = draft_size[::-1] if orientation in _ROTATING_ORIENTATIONS else draft_size
        d = _dct_scale(width, height, target, floor)
        try:
            rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=-(-width // d), min_height=-(-height // d))
        except Exception:  # noqa: BLE001 - corrupt or truncated: Pillow explains (or decodes what it can)
            return np.asarray(decode(data, draft_size, max_pixels, max_bytes))
        return _orient(rgb, orientation)
    return np.asarray(decode(data, draft_size, max_pixels, max_bytes))


def resize_to(img: Image.Image | np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize (squash) to ``size = (width, height)`` with the named interpolation; uint8 HWC out."""
    if interpolation in _OPENCV_INTERPOLATION:
        return cv2.resize(np.asarray(img), size, interpolation=_OPENCV_INTERPOLATION[interpolation])
    pil = img if isinstance(img, Image.Image) else Image.fromarray(img)
    return np.asarray(pil.resize(size, _RESAMPLE[interpolation]), dtype=np.uint8)


def resize(img: Image.Image | np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """Apply the contract's resize policy to an RGB image; returns uint8 ``(height, width, 3)``."""
    if contract.resize == "squash":
        return resize_to(img, (contract.width, contract.height), contract.interpolation)
    width, height = img.size if isinstance(img, Image.Image) else (img.shape[1], img.shape[0])
    scale = max(contract.width, contract.height) / contract.crop_fraction / min(width, height)
    new_w, new_h = max(contract.width, round(width * scale)), max(contract.height, round(height * scale))
    out = resize_to(img, (new_w, new_h), contract.interpolation)
    left, top = (new_w - contract.width) // 2, (new_h - contract.height) // 2
    return np.ascontiguousarray(out[top : top + contract.height, left : left + contract.width])


def draft_size(contract: PreprocessContract) -> tuple[int, int]:
    """Smallest (width, height) a decode must keep for :func:`resize` to see full detail."""
    if contract.resize == "squash":
        return contract.width, contract.height
    side = round(max(contract.width, contract.height) / contract.crop_fraction)
    return side, side


def normalize(rgb: np.ndarray, contract: PreprocessContract, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` or a batch ``(N, H, W, 3)`` -> float32 ``(3, H, W)`` or
    ``(N, 3, H, W)``, ``(x / 255 - mean) / std``; written into ``out`` when given (a slot of a
    batch array: no per-image allocation, which costs page faults and serialises threads)."""
    scale, shift = _affine(contract)
    shape = (*rgb.shape[:-3], 3, *rgb.shape[-3:-1])
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {shape}, not {out.dtype} {out.shape}")
    for image, planes in zip(rgb.reshape(-1, *rgb.shape[-3:]), out.reshape(-1, *out.shape[-3:]), strict=True):
        # OpenCV splits the interleaved channels about twice as fast as a strided NumPy copy;
        # then one float pass per plane, in place
        for channel, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
            target = planes[channel]
            target[...] = plane
            target *= scale[channel]
            target += shift[channel]
    return out


@functools.lru_cache(maxsize=16)
def _affine(contract: PreprocessContract) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(scale, shift)`` with ``x * scale + shift == (x / 255 - mean) / std``, shaped (3,)."""
    std = np.asarray(contract.std, dtype=np.float64)
    scale = 1.0 / (255.0 * std)
    shift = -np.asarray(contract.mean, dtype=np.float64) / std
    return scale.astype(np.float32), shift.astype(np.float32)


def load_rgb(
    data: bytes, contract: PreprocessContract, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Encoded bytes -> resized uint8 HWC RGB array (``height x width x 3``), before normalising."""
    return resize(decode_for(data, contract, draft_size(contract), max_pixels, max_bytes), contract)


def decode_for(
    data: bytes,
    contract: PreprocessContract,
    size: tuple[int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Image.Image | np.ndarray:
    """Decode with the contract's decoder for a later resize to ``size`` (width, height):
    an array from :func:`decode_array` for OpenCV interpolations, else a Pillow image."""
    if contract.interpolation in _OPENCV_INTERPOLATION:
        return decode_array(data, size, contract.jpeg_draft_floor, max_pixels, max_bytes)
    return decode(data, size, max_pixels, max_bytes)


def preprocess_bytes(
    data: bytes, contract: PreprocessContract, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Encoded bytes -> the model's input for one image: float32 ``(3, height, width)``."""
    return normalize(load_rgb(data, contract, max_pixels, max_bytes), contract)


def preprocess_into(
    data: bytes, contract: PreprocessContract, out: np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """:func:`preprocess_bytes` written into ``out``, float32 ``(3, height, width)`` (one slot
    of a batch array), which it returns."""
    return normalize(load_rgb(data, contract, max_pixels, max_bytes), contract, out)


def preprocess_batch(
    encoded: Sequence[bytes],
    contract: PreprocessContract,
    pool: ThreadPoolExecutor,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[np.ndarray, list[BaseException | None]]:
    """Many encoded images -> one float32 ``(N, 3, height, width)`` batch, each image decoded on
    ``pool`` straight into its slot, and per image the exception it raised (``None``: decoded).
    Slots of failed images are left undefined."""
    out = np.empty((len(encoded), 3, contract.height, contract.width), np.float32)
    futures = [pool.submit(preprocess_into, data, contract, out[i], max_pixels, max_bytes) for i, data in enumerate(encoded)]
    return out, [f.exception() for f in futures]


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
