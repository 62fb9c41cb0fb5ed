"""``synthetic:WxH``: a deterministic generated test picture, named in a script instead of a file.

Scripts and tests need pictures that are the same on every machine (so image ids, which are
content hashes, are too) without shipping image files: smooth colour ramps and a diagonal pattern,
computed, with no randomness.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

SYNTHETIC = re.compile(r"^synthetic:(\d+)x(\d+)$")
MAX_SIDE = 4096


def parse_synthetic(spec: str) -> tuple[int, int] | None:
    """``(width, height)`` if ``spec`` is ``synthetic:WxH``, else None (it is a file path)."""
    match = SYNTHETIC.match(spec)
    return (int(match[1]), int(match[2])) if match else None


def synthetic_image(width: int, height: int) -> "Image.Image":
    """The test picture of that size."""
    import numpy as np
    from PIL import Image

    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = np.round(127.5 + 127.5 * np.sin(2 * np.pi * x / width * 3.0 + 0.3))[None, :]
    rgb[..., 1] = np.round(127.5 + 127.5 * np.cos(2 * np.pi * y / height * 2.0))[:, None]
    rgb[..., 2] = (np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13) % 256
    return Image.fromarray(rgb)
