"""From a stored ``slide`` action to what is put on the page: which picture, cut from where.

The deck and the previews are both drawn from a `SlidePlan`, so the PNG shows what the
``.pptx`` holds. The picture rule: the user's picture wins (they gave it to be shown); else the
model's drawing of the whole slide is cut at the picture box (the Nano draws the slide as one
picture, the picture region inside it); else the region stays empty, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from .geometry import crop_box
from .payload import Picture, Slide


@dataclass
class SlidePlan:
    slide: Slide
    picture: Image.Image | None = None
    source: dict | None = None  # where the picture came from, for slides.json
    warnings: list[str] = field(default_factory=list)

    @property
    def parents(self) -> tuple[str, ...]:
        """The pictures this slide was made from: the one shown, then the drawing."""
        ids = [p.image_id for p in (self.slide.given, self.slide.drawing) if p is not None]
        return tuple(dict.fromkeys(ids))


def plan_slide(slide: Slide, get_image: Callable[[str], Image.Image]) -> SlidePlan:
    plan = SlidePlan(slide=slide, warnings=list(slide.warnings))
    if slide.given is not None:
        image = _load(get_image, slide.given, plan)
        if image is not None:
            plan.picture = image
            plan.source = {"kind": "given", **_record(slide.given)}
            return plan
    if slide.drawing is not None:
        drawing = _load(get_image, slide.drawing, plan)
        if drawing is not None:
            pixels = crop_box(slide.regions["picture"].box, drawing.size)
            plan.picture = drawing.crop(pixels)
            plan.source = {"kind": "cut", "crop_px": list(pixels), **_record(slide.drawing)}
            return plan
    plan.warnings.append("no picture for the picture region: it is left empty")
    return plan


def _load(get_image, picture: Picture, plan: SlidePlan) -> Image.Image | None:
    try:
        image = get_image(picture.image_id)
    except Exception as exc:  # a picture gone from the store must not take the deck with it
        plan.warnings.append(f"picture {picture.image_id[:12]} could not be read ({exc})")
        return None
    return image.convert("RGBA" if "A" in image.getbands() else "RGB")


def _record(picture: Picture) -> dict:
    return picture.model_dump(mode="json")
