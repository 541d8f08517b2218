"""How big a model file is, as stored and as compressed.

``compressed``: the ONNX file through DEFLATE (``zlib`` level 9, what ``gzip -9`` and a zip
archive use). A dense float32 file barely compresses; pruned zeros and a few clustered values
per layer do, so this measures what sparsity and clustering save on disk or on the wire. The
ONNX file itself stays the same size (its tensors are stored dense), and ONNX Runtime's dense
kernels run it no faster.
"""

from __future__ import annotations

import zlib
from pathlib import Path


def sizes(path: Path) -> tuple[int, int]:
    """(bytes on disk, bytes after zlib level 9)."""
    data = Path(path).read_bytes()
    return len(data), len(zlib.compress(data, 9))
