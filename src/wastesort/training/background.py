"""Replace TrashNet's near-white poster board with other backgrounds.

TrashNet shows every item on the same white board under the same light; a model trained on it
alone learns that backdrop. :func:`replace_background` cuts the item out with a mask taken
from the board's own colour and pastes it onto a random colour, gradient, noise or texture.
Used as a training augmentation (:class:`ReplaceBackground`, which can also compose a *scene*:
the item smaller and off-centre on a floor, with a shadow and the room's light,
:func:`compose_scene`) and, with fixed seeds, to make the "backgrounds replaced" test set that
stands in for real-world photos (:func:`proxy_tensor`).

Tensors are uint8 ``(3, H, W)`` RGB, as in the training cache.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from wastesort.contract import PreprocessContract
from wastesort.preprocess import decode, preprocess_bytes

#: Largest difference of chroma (colour with its brightness removed, 0-255 scale) from the
#: board's still counted as board.
CHROMA_TOLERANCE = 22
#: Pixels darker than this fraction of the board's brightness are foreground (TrashNet's
#: shadows and uneven light stay above it).
DARK_RATIO = 0.62
#: Lightness gradient (Sobel magnitude, 0-255 scale) that marks an item's outline: white items
#: on the white board differ from it mostly at their edges.
EDGE_TOLERANCE = 30
#: Pixels brighter than this multiple of the board's brightness are foreground.
BRIGHT_RATIO = 1.3
#: The border's median counts as a board only when it is this light and this grey (0-255).
BOARD_MIN_LIGHTNESS = 110
BOARD_MAX_CHROMA = 40
#: A mask covering less or more of the image than this is not trusted: nothing is replaced.
MIN_FOREGROUND, MAX_FOREGROUND = 0.03, 0.85
#: Width of the border band whose median is taken as the board colour (fraction of the side).
BORDER = 0.04
KINDS = ("colour", "gradient", "noise", "texture")


def board_colour(image: torch.Tensor) -> torch.Tensor:
    """Median colour (float ``(3,)``) of the image's border band: the board, for TrashNet."""
    _, h, w = image.shape
    b = max(1, round(BORDER * min(h, w)))
    band = torch.cat(
        [image[:, :b].reshape(3, -1), image[:, -b:].reshape(3, -1), image[:, :, :b].reshape(3, -1), image[:, :, -b:].reshape(3, -1)], 1
    )
    return band.float().median(dim=1).values


def foreground_mask(image: torch.Tensor) -> torch.Tensor | None:
    """Soft foreground mask, float ``(H, W)`` in [0, 1]: 1 on the item, 0 on the board; or
    ``None`` when the image has no light, grey board to remove (the item fills the frame, or
    the mask would cover almost nothing or almost everything).

    A pixel is foreground when its chroma differs from the board's, it is much darker or
    brighter than the board (brightness alone varies across the board with the light), or it
    lies on a strong edge (the outline of a white item). The binary mask is closed, its holes
    filled, opened to drop specks (scipy.ndimage), and its edge softened over a few pixels.
    """
    _, h, w = image.shape
    board = board_colour(image)
    board_light = float(board.mean())
    if board_light < BOARD_MIN_LIGHTNESS or float(board.max() - board.min()) > BOARD_MAX_CHROMA:
        return None
    x = image.float()
    light = x.mean(0)
    chroma = ((x - light) - (board - board_light)[:, None, None]).abs().amax(0)
    fg = ((chroma > CHROMA_TOLERANCE) | (light < DARK_RATIO * board_light) | (light > BRIGHT_RATIO * board_light)).numpy()
    smooth = ndimage.gaussian_filter(light.numpy(), 1.0)
    edges = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1)) / 4 > EDGE_TOLERANCE
    k = max(3, round(0.015 * min(h, w)))
    mask = ndimage.binary_closing(fg | edges, np.ones((3 * k, 3 * k), bool), border_value=0)
    mask = ndimage.binary_opening(ndimage.binary_fill_holes(mask), np.ones((2 * k, 2 * k), bool))
    fraction = float(mask.mean())
    if not MIN_FOREGROUND <= fraction <= MAX_FOREGROUND:
        return None
    soft = ndimage.uniform_filter(mask.astype(np.float32), size=5, mode="nearest")
    return torch.from_numpy(soft).clamp(0, 1)


def random_background(h: int, w: int, generator: torch.Generator, kind: str | None = None) -> torch.Tensor:
    """A uint8 ``(3, h, w)`` background: a flat colour, a linear gradient between two colours,
    low-frequency colour noise, or a striped/checked texture with grain."""
    kind = kind or KINDS[int(torch.randint(len(KINDS), (1,), generator=generator))]
    c1, c2 = torch.rand(3, generator=generator) * 255, torch.rand(3, generator=generator) * 255
    if kind == "colour":
        bg = c1[:, None, None].expand(3, h, w)
    elif kind == "gradient":
        angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        t = ((xs * math.cos(angle) + ys * math.sin(angle)) * 0.5 + 0.5).clamp(0, 1)
        bg = c1[:, None, None] * (1 - t) + c2[:, None, None] * t
    elif kind == "noise":
        cells = int(2 ** torch.randint(1, 6, (1,), generator=generator))
        small = torch.rand(1, 3, max(1, h // cells), max(1, w // cells), generator=generator) * 255
        bg = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]
    elif kind == "texture":
        period = 4 + float(torch.rand(1, generator=generator)) * 28
        angle = float(torch.rand(1, generator=generator)) * math.pi
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        u = torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
        if float(torch.rand(1, generator=generator)) < 0.5:  # checks instead of stripes
            u = u * torch.sin((-xs * math.sin(angle) + ys * math.cos(angle)) * 2 * math.pi / period)
        t = (u > 0).float()
        bg = c1[:, None, None] * (1 - t) + c2[:, None, None] * t
        bg = bg + torch.randn(3, h, w, generator=generator) * 12
    else:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    return bg.clamp(0, 255).round().to(torch.uint8)


def replace_background(image: torch.Tensor, generator: torch.Generator, kind: str | None = None) -> torch.Tensor:
    """``image`` (uint8 ``(3, H, W)``) with its board replaced by :func:`random_background`.
    Pixels under a full mask are returned unchanged; so is the whole image when
    :func:`foreground_mask` finds no board to replace."""
    mask = foreground_mask(image)
    if mask is None:
        return image
    bg = random_background(image.shape[1], image.shape[2], generator, kind)
    out = image.float() * mask + bg.float() * (1 - mask)
    return out.round().clamp(0, 255).to(torch.uint8)


#: Floors a scene is composed on. Never wooden planks: the simulated site's floor
#: (``experiments/simulated_site``) stays unseen, so that it measures what a new floor does.
FLOORS = ("concrete", "tiles", "terrazzo", "fabric")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(1, generator=generator))


def _octaves(h: int, w: int, generator: torch.Generator, cells: tuple[int, ...]) -> torch.Tensor:
    """Smooth noise ``(h, w)`` around 0: the sum of bilinearly upsampled random grids."""
    total = torch.zeros(h, w)
    for cell in cells:
        small = torch.rand(1, 1, max(2, h // cell), max(2, w // cell), generator=generator) - 0.5
        total += F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0, 0] * (cell / max(cells))
    return total


def random_floor(h: int, w: int, generator: torch.Generator, kind: str | None = None) -> torch.Tensor:
    """A uint8 ``(3, h, w)`` floor of one of :data:`FLOORS` in a random, mostly muted colour."""
    kind = kind or FLOORS[int(torch.randint(len(FLOORS), (1,), generator=generator))]
    grey = _uniform(generator, 60, 210)
    tint = 1 + (torch.rand(3, generator=generator) - 0.5) * 0.35
    colour = (grey * tint)[:, None, None]
    grain = torch.randn(1, h, w, generator=generator) * _uniform(generator, 2, 9)
    if kind == "concrete":
        floor = colour * (1 + 0.35 * _octaves(h, w, generator, (4, 16, 64)))[None]
    elif kind == "tiles":
        side = int(_uniform(generator, 40, 170))
        grout = int(_uniform(generator, 2, 7))
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        ys, xs = ys + int(_uniform(generator, 0, side)), xs + int(_uniform(generator, 0, side))
        tone = 1 + (torch.rand(h // side + 3, w // side + 3, generator=generator) - 0.5) * 0.2
        floor = colour * tone[ys // side, xs // side][None]
        line = ((ys % side) < grout) | ((xs % side) < grout)
        floor = torch.where(line[None], colour * _uniform(generator, 0.55, 1.3), floor)
    elif kind == "terrazzo":
        chips = (_octaves(h, w, generator, (2, 4)) > _uniform(generator, 0.12, 0.22)).float()[None]
        chip_colour = (torch.rand(3, generator=generator) * 255)[:, None, None]
        floor = colour * (1 + 0.1 * _octaves(h, w, generator, (16, 64)))[None] * (1 - chips) + chip_colour * chips
    elif kind == "fabric":
        period = _uniform(generator, 3, 8)
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        weave = torch.sin(xs * 2 * math.pi / period) * torch.sin(ys * 2 * math.pi / period)
        floor = colour * (1 + 0.12 * weave + 0.25 * _octaves(h, w, generator, (8, 32)))[None]
    else:
        raise ValueError(f"kind must be one of {FLOORS}, not {kind!r}")
    return (floor + grain).clamp(0, 255).round().to(torch.uint8)


def _blurred(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``(1, H, W)`` box-blurred twice (about Gaussian) over ``size`` pixels."""
    k = max(1, size | 1)
    for _ in range(2):
        x = F.avg_pool2d(x[None], k, stride=1, padding=k // 2, count_include_pad=False)[0]
    return x


def compose_scene(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The item of ``image`` (uint8 ``(3, H, W)``, its :func:`foreground_mask` ``mask``) on a
    :func:`random_floor`: scaled to 45-95% of the frame and placed anywhere, a soft shadow
    thrown in a random direction, the whole frame under a light that falls off one way and a
    colour cast. Returns uint8 ``(3, H, W)``."""
    _, h, w = image.shape
    scale = _uniform(generator, 0.45, 0.95)
    sh, sw = max(8, round(h * scale)), max(8, round(w * scale))
    item = F.interpolate(image[None].float(), size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)[0]
    alpha = F.interpolate(mask[None, None].float(), size=(sh, sw), mode="bilinear", align_corners=False)[0]
    top, left = int(_uniform(generator, 0, h - sh + 1)), int(_uniform(generator, 0, w - sw + 1))
    cover = torch.zeros(1, h, w)
    cover[:, top : top + sh, left : left + sw] = alpha
    placed = torch.zeros(3, h, w)
    placed[:, top : top + sh, left : left + sw] = item
    angle = _uniform(generator, 0, 2 * math.pi)
    reach = _uniform(generator, 0.02, 0.07) * min(h, w)
    shadow = torch.roll(cover, (round(reach * math.sin(angle)), round(reach * math.cos(angle))), dims=(1, 2))
    shadow = _blurred(shadow, int(_uniform(generator, 0.02, 0.06) * min(h, w)))
    out = random_floor(h, w, generator).float() * (1 - _uniform(generator, 0.2, 0.55) * shadow)
    out = out * (1 - cover) + placed * cover
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    light_angle = _uniform(generator, 0, 2 * math.pi)
    fall = (xs * math.cos(light_angle) + ys * math.sin(light_angle)) * 0.5 + 0.5
    light = _uniform(generator, 0.85, 1.15) - _uniform(generator, 0.0, 0.35) * fall
    cast = 1 + (torch.rand(3, generator=generator) - 0.5) * 0.16
    return (out * light[None] * cast[:, None, None]).clamp(0, 255).round().to(torch.uint8)


class ReplaceBackground(torch.nn.Module):
    """Training augmentation: with probability ``p`` the board is replaced (uint8 in, uint8 out);
    a share ``scene`` of those replacements is a whole scene (:func:`compose_scene`)."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None, scene: float = 0.0) -> None:
        super().__init__()
        self.p, self.scene = p, scene
        self.generator = generator or torch.Generator().manual_seed(0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or float(torch.rand(1, generator=self.generator)) >= self.p:
            return image
        if self.scene > 0 and float(torch.rand(1, generator=self.generator)) < self.scene:
            mask = foreground_mask(image)
            return image if mask is None else compose_scene(image, mask, self.generator)
        return replace_background(image, self.generator)


#: Seed of the "backgrounds replaced" evaluation sets (training draws from its own generator).
PROXY_SEED = 20261122


def replaced_jpeg(data: bytes, seed: int, quality: int = 92) -> bytes:
    """An encoded photo with its board replaced (background drawn from ``seed``), re-encoded
    as JPEG, for evaluation through the serving preprocessing (bytes in)."""
    rgb = np.asarray(decode(data), dtype=np.uint8)
    out = replace_background(torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous(), torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(out.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def proxy_tensor(paths: list[Path], contract: PreprocessContract, seed: int = PROXY_SEED) -> np.ndarray:
    """float32 ``(N, 3, H, W)``: each photo with its background replaced (photo ``i`` from
    ``seed + i``), then the serving preprocessing."""
    return np.stack([preprocess_bytes(replaced_jpeg(Path(p).read_bytes(), seed + i), contract) for i, p in enumerate(paths)])
