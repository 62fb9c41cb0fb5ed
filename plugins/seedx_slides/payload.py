"""The ``slide`` action's payload: everything needed to rebuild a slide, and nothing else.

The payload holds words, canvas-fraction regions and pictures by content hash, never pixels or
EMUs: the deck is rebuilt from the session's stored actions every turn, so what is stored must
be the layout the model gave, and how it is drawn (EMUs, preview pixels) is derived from it.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from seedx_agent import Provenance

from .geometry import DEFAULT_ASPECT, SLIDE_SIZES
from .layout import Region


class Picture(BaseModel):
    """An image of the turn, by content hash."""

    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    provenance: Provenance | None = None


class Slide(BaseModel):
    """One slide as the model laid it out.

    ``regions`` maps ``title``, ``text`` and ``picture`` to a `Region` (fractions of the answer
    canvas). The picture region shows ``given`` (the turn's input image) when there is one, else
    the part of ``drawing`` (the model's picture of the whole slide) under the picture box.
    """

    version: ClassVar[int] = 1
    title: str = ""
    bullets: tuple[str, ...] = ()
    regions: dict[str, Region]
    aspect: str = Field(default=DEFAULT_ASPECT, pattern="^(" + "|".join(SLIDE_SIZES) + ")$")
    drawing: Picture | None = None
    given: Picture | None = None
    text: str = Field(default="", description="the model's words, as it said them")
    warnings: tuple[str, ...] = ()
