"""``wholeness.py``: an item in one piece counts as whole, the same item in two pieces does not."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wholeness  # noqa: E402


def _board(path: Path, boxes: list[tuple[int, int, int, int]]) -> Path:
    """A light grey board (200x200) with dark red rectangles ``(top, left, bottom, right)`` on it."""
    photo = np.full((200, 200, 3), 190, np.uint8)
    for top, left, bottom, right in boxes:
        photo[top:bottom, left:right] = (150, 30, 30)
    Image.fromarray(photo).save(path)
    return path


def test_one_piece_is_whole_and_two_equal_pieces_are_not(tmp_path: Path) -> None:
    one = wholeness.largest_share(_board(tmp_path / "one.png", [(50, 40, 150, 100)]))
    two = wholeness.largest_share(_board(tmp_path / "two.png", [(50, 20, 150, 60), (50, 140, 150, 180)]))
    assert one >= wholeness.WHOLE_SHARE
    assert 0.4 < two < 0.6 < wholeness.WHOLE_SHARE
