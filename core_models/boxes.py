"""SEED-X's boxes: four ``<loc-k>`` tokens, centre-x, centre-y, width, height of the box in 224
bins of the picture it is on (reference §8).

The official encoding is ``clamp(int(v * 224), 0, 223)`` of each normalised value, and the
decoding ``k / 224 * size``. The bins say nothing about which picture the box is on nor its
size; callers supply both.

This is the one definition of the bin count: the tokenizer's ``<loc-0>…<loc-223>``, the reply
parser, the skills, the test kit and the Nano's tasks all read ``LOC_BINS`` from here. Boxes
found in generated text (`parse_boxes`, one `Box` per ``<box_start>`` group, well-formed or not)
are here too: the decode loop reports them with every result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOC_BINS = 224

Bins = tuple[int, int, int, int]
XYXY = tuple[float, float, float, float]


def valid_bins(bins) -> bool:
    """Four ints, each a bin in ``[0, LOC_BINS)``."""
    return len(bins) == 4 and all(isinstance(b, int) and 0 <= b < LOC_BINS for b in bins)


def bins_to_xyxy(bins: Bins, width: float, height: float) -> XYXY:
    """The pixel box ``(x0, y0, x1, y1)`` of ``bins`` on a ``width`` x ``height`` picture
    (unclipped: a box near an edge may reach past it)."""
    cx, cy, w, h = (b / LOC_BINS for b in bins)
    return ((cx - w / 2) * width, (cy - h / 2) * height,
            (cx + w / 2) * width, (cy + h / 2) * height)


def xyxy_to_bins(box: XYXY, width: float, height: float) -> Bins:
    """The bins of a pixel box ``(x0, y0, x1, y1)`` on a ``width`` x ``height`` picture."""
    x0, y0, x1, y1 = box
    values = ((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
    return tuple(min(max(int(v * LOC_BINS), 0), LOC_BINS - 1) for v in values)


@dataclass
class Box:
    """A ``<box_start><loc-cx><loc-cy><loc-w><loc-h><box_end>`` group of generated text."""

    bins: list[int]         # the <loc-k> values in order; 4 when well-formed
    phrase: str             # visible text between the previous box (or the start) and this box
    closed: bool            # a <box_end> was seen

    @property
    def valid(self) -> bool:
        return self.closed and valid_bins(self.bins)

    def to_xyxy(self, width: float, height: float) -> XYXY | None:
        """Pixel box as the scripts draw it (centre/size over the original width and height)."""
        return bins_to_xyxy(self.bins, width, height) if self.valid else None


_BOX_TOKEN = re.compile(r"<box_start>|<box_end>|<loc-(\d+)>")
_TAG = re.compile(r"<[^>]*>")


def parse_boxes(text: str, open_box: bool = False) -> list[Box]:
    """Boxes in generated text, tolerant of spaces between tokens (4.30 decoding inserts them).

    ``open_box``: the prompt already ended inside a box (SEED-X pretrained grounding prompts end
    with ``<box_start>``), so the text starts with its ``<loc-k>`` values. A ``<box_start>``
    inside an open box closes it as unclosed; ``<loc-k>`` outside a box and a ``<box_end>`` without
    a start (and no ``open_box``) are ignored; out-of-range or missing bins give ``valid=False``.
    """
    boxes: list[Box] = []
    current: Box | None = Box([], "", False) if open_box else None
    boundary = 0  # the phrase of a box is the tag-stripped text since the previous box tag
    for m in _BOX_TOKEN.finditer(text):
        token = m.group(0)
        if token == "<box_start>":
            if current is not None:
                boxes.append(current)
            current = Box([], _TAG.sub("", text[boundary:m.start()]).strip(), False)
            boundary = m.end()
        elif token == "<box_end>":
            if current is not None:
                current.closed = True
                boxes.append(current)
                current = None
            boundary = m.end()
        elif current is not None:
            current.bins.append(int(m.group(1)))
    if current is not None:
        boxes.append(current)
    return boxes
