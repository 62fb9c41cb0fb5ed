"""Small helpers shared by tests: the golden fixtures' synthetic test image."""

from __future__ import annotations

import numpy as np
from PIL import Image


def synthetic_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """The fixtures' test picture, ``(height, width, 3)`` uint8 (formula from golden/README.md).

    Smooth sin/cos ramps in R and G plus a diagonal sawtooth in B, so that any mix-up of axes,
    channels or resampling filters changes the numbers the fixtures recorded. The README builds
    full float64 ``np.mgrid`` planes; here R depends on x only, G on y only and B is an exact
    integer, so each channel is computed on its own axis and broadcast: the same bytes (see
    ``test_synthetic_rgb_helper_is_the_readme_formula``), fast enough for the 4000x3000 cases.
    """
    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    r = 127.5 + 127.5 * np.sin(2 * np.pi * x / max(width, 1) * 3.0 + 0.3)
    g = 127.5 + 127.5 * np.cos(2 * np.pi * y / max(height, 1) * 2.0)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[..., 0] = np.clip(np.round(r), 0, 255).astype(np.uint8)[None, :]
    out[..., 1] = np.clip(np.round(g), 0, 255).astype(np.uint8)[:, None]
    out[..., 2] = ((np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13 + seed * 31) % 256)
    return out


def synthetic_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """``synthetic_rgb`` as an RGB PIL image."""
    return Image.fromarray(synthetic_rgb(width, height, seed))
