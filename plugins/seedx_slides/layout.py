"""Reading a slide out of the model's reply: the title, the bullets and the layout regions.

The answer format is the one the Nano's ``slide`` adapter was taught (and the one a user
fine-tune for the ``slides`` role should follow)::

    Title: Blue squares
    - A square has four equal sides.
    - …
    Layout: title <box>, text <box>, picture <box>.
    <img>…</img>                      (the whole slide, drawn)

Each box is SEED-X's ``(cx, cy, w, h)`` in 224 bins of the *answer canvas*: the slide as the
model drew it, whatever its pixel size. A region is therefore kept as the fractions of that
canvas it covers, and mapped to EMUs, preview pixels and drawing pixels by multiplying.

A reply is read tolerantly, because the turn must not be lost to it: newlines that decoded as
spaces still separate bullets; a missing ``Title:`` takes the first line; a region whose box is
missing, degenerate or wholly off the canvas gets the default region (the Nano's own layout);
a box reaching past the canvas is clipped. Each such repair is a warning on the slide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from seedx_agent import LOC_BINS, BoxPart, TextPart

REGIONS = ("title", "text", "picture")
# where a region goes when the reply gives no usable box: the Nano's slide layout (title bar
# across the top, bullets on the left, the picture on the right), as canvas fractions
DEFAULT_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "title": (0.08, 0.06, 0.92, 0.18),
    "text": (0.08, 0.30, 0.50, 0.82),
    "picture": (0.56, 0.30, 0.92, 0.90),
}
MIN_SIDE = 1 / LOC_BINS  # a region thinner than one bin holds nothing

_LAYOUT = re.compile(r"\blayout\s*:", re.I)
_TITLE = re.compile(r"^\s*title\s*:\s*", re.I)
_BULLET = re.compile(r"(?:^|\s)[-•*]\s+")
_REGION_NAME = re.compile(r"\b(title|text|picture|image)\b", re.I)
_BOX_MARK = "\x00"  # stands for a box in the reply's text while the text is read


class Region(BaseModel):
    """One region of the slide: ``box`` is what is used, ``(x0, y0, x1, y1)`` as fractions of
    the answer canvas; ``bins`` the model's ``(cx, cy, w, h)`` in 224 bins (None: it gave none,
    and ``source`` is ``"default"``)."""

    box: tuple[float, float, float, float]
    bins: tuple[int, int, int, int] | None = None
    source: str = Field(pattern=r"^(model|clipped|default)$")


@dataclass
class ReadSlide:
    title: str = ""
    bullets: list[str] = field(default_factory=list)
    regions: dict[str, Region] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_slide(parts: Sequence) -> ReadSlide:
    """The slide in a reply's text and box parts (other parts are ignored)."""
    pieces, boxes = [], []
    for part in parts:
        if isinstance(part, TextPart):
            pieces.append(part.text.replace(_BOX_MARK, " "))
        elif isinstance(part, BoxPart):
            pieces.append(_BOX_MARK)
            boxes.append(part.bins)
    text = "".join(pieces)
    slide = ReadSlide()
    found = list(_LAYOUT.finditer(text))
    body = text[:found[-1].start()] if found else text
    layout_start = found[-1].end() if found else 0
    if not found:
        slide.warnings.append("the reply has no 'Layout:' line")
    _read_words(body, slide)
    _read_regions(text, layout_start, boxes, slide)
    return slide


def _read_words(body: str, slide: ReadSlide) -> None:
    flat = " ".join(body.replace(_BOX_MARK, " ").split())
    head, *items = _BULLET.split(flat)
    slide.bullets = [b.strip() for b in items if b.strip()]
    head = head.strip()
    if _TITLE.match(head):
        slide.title = _TITLE.sub("", head).strip()
    elif head:  # a title without its label: the words before the first bullet
        slide.title = head
        slide.warnings.append(f"the reply has no 'Title:' line; took {head!r} as the title")
    if not slide.title:
        slide.warnings.append("the reply has no title: the title region is left empty")
    if not slide.bullets:
        slide.warnings.append("the reply has no bullet lines: the text region is left empty")


def _read_regions(text: str, layout_start: int, boxes: list, slide: ReadSlide) -> None:
    """Each box after the layout label belongs to the region named last before it."""
    named: dict[str, tuple[int, int, int, int]] = {}
    marks = [i for i, ch in enumerate(text) if ch == _BOX_MARK]
    previous = layout_start
    for at, bins in zip(marks, boxes):
        if at < layout_start:
            slide.warnings.append(f"ignored a box before the 'Layout:' line: {list(bins)}")
            continue
        names = _REGION_NAME.findall(text[previous:at])
        previous = at + 1
        if not names:
            slide.warnings.append(f"ignored a box that names no region: {list(bins)}")
            continue
        name = names[-1].lower().replace("image", "picture")
        if name in named:
            slide.warnings.append(f"ignored a second {name} box: {list(bins)}")
            continue
        named[name] = bins
    for name in REGIONS:
        slide.regions[name] = _region(name, named.get(name), slide.warnings)


def _region(name: str, bins, warnings: list[str]) -> Region:
    default = Region(box=DEFAULT_REGIONS[name], source="default")
    if bins is None:
        warnings.append(f"the layout gives no {name} box: used the default {name} region")
        return default
    cx, cy, w, h = (b / LOC_BINS for b in bins)
    raw = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    box = tuple(min(max(v, 0.0), 1.0) for v in raw)
    if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
        warnings.append(f"the {name} box {list(bins)} is empty on the canvas: used the default "
                        f"{name} region")
        return default.model_copy(update={"bins": tuple(bins)})
    if box != raw:
        warnings.append(f"the {name} box {list(bins)} reaches past the canvas: clipped to it")
        return Region(box=box, bins=tuple(bins), source="clipped")
    return Region(box=box, bins=tuple(bins), source="model")
