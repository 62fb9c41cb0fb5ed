"""Where things go: the slide's size, a region in EMUs, a picture fitted into its region.

One rule serves the deck, the previews and the cut: a region is a box in fractions of the answer
canvas, so on a slide of ``W`` x ``H`` (EMUs, preview pixels or drawing pixels alike) it is the
box times ``(W, H, W, H)``. The canvas is stretched to the slide's shape (the Nano answers on a
square), but a picture never is: it is fitted inside its region, whole, and centred.
"""

from __future__ import annotations

EMU_PER_INCH = 914400
# slide shapes by name; the width is PowerPoint's 13.333 in (16:9) or 10 in (4:3), 7.5 in high
SLIDE_SIZES: dict[str, tuple[int, int]] = {
    "16:9": (12192000, 6858000),
    "4:3": (9144000, 6858000),
}
DEFAULT_ASPECT = "16:9"

Box = tuple[float, float, float, float]
Rect = tuple[int, int, int, int]  # left, top, width, height


def region_rect(box: Box, width: int, height: int) -> Rect:
    """A canvas-fraction box ``(x0, y0, x1, y1)`` as a rectangle on a ``width`` x ``height``
    slide, in its units, rounded."""
    x0, y0 = round(box[0] * width), round(box[1] * height)
    x1, y1 = round(box[2] * width), round(box[3] * height)
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def fit_centred(rect: Rect, picture_size: tuple[int, int]) -> Rect:
    """The largest rectangle of the picture's aspect inside ``rect``, centred in it."""
    left, top, width, height = rect
    pw, ph = picture_size
    if width * ph > height * pw:  # the region is wider than the picture: full height
        w, h = max(1, round(height * pw / ph)), height
    else:
        w, h = width, max(1, round(width * ph / pw))
    return left + (width - w) // 2, top + (height - h) // 2, w, h


def crop_box(box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixels ``(x0, y0, x1, y1)`` a canvas-fraction box covers on a picture of ``size``
    (at least one pixel each way)."""
    w, h = size
    x0, y0 = min(int(box[0] * w), w - 1), min(int(box[1] * h), h - 1)
    x1, y1 = max(x0 + 1, round(box[2] * w)), max(y0 + 1, round(box[3] * h))
    return x0, y0, min(x1, w), min(y1, h)
