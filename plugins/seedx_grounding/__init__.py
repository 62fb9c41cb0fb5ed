"""Grounding: every box SEED-X draws becomes a ``locate`` action you can see and reuse.

A built-in skill written like a third-party plugin: it uses only the public ``seedx_agent``
names and is installed through the ``seedx`` entry point (pyproject.toml).

Which picture a box is on. SEED-X's boxes are 224-bin (centre-x, centre-y, width, height)
fractions of *some* image and do not say which. We follow ``SkillReply.placed_boxes``: the box's
``target_image`` if the runtime set it, else the **last input image of the turn** (the one the
user asked about), else, in a turn without input images, the image the model generated next to
it. Pixel coordinates are always computed on that image's own size, so a box on a 640x320 input
is not stretched by the 448x448 view the ViT saw.

Running ``locate`` writes, under the skill's artifact directory:

* ``crop_<index>_<phrase>.png``: the box cut out of its image;
* ``annotated_<image id>.png``: the image with every box located so far in this turn, each
  category in its own colour, labelled with its phrase;
* ``coco.json``: the turn's boxes in COCO detection format (``images``, ``annotations`` with
  ``bbox = [x, y, w, h]`` in pixels, ``categories`` named by phrase).

The annotated image and the COCO file are rebuilt from ``coco.json`` on every action, so they
always hold every box of the turn while each action stays independent (an action re-run replaces
its own annotation). A box with no area once clipped to its image (width or height 0) is kept in
the action with a warning, but gets no crop or annotation: COCO tools reject zero-area boxes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from pathlib import Path
from typing import ClassVar

from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from seedx_agent import (Action, ActionResult, Skill, SkillContext, SkillReply, hookimpl,
                         write_json)

log = logging.getLogger(__name__)

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
"""Outline colour of category ``id`` is ``PALETTE[(id - 1) % len(PALETTE)]``."""

COCO_NAME = "coco.json"
UNNAMED = "object"  # category of a box the model gave no phrase


class Locate(BaseModel):
    """One box, placed on the image it refers to."""

    version: ClassVar[int] = 1
    index: int = Field(ge=0, description="position of the box among the reply's boxes")
    phrase: str | None = None
    bins: tuple[int, int, int, int] = Field(description="centre-x, centre-y, w, h in 224 bins")
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    image_size: tuple[int, int] = Field(description="width, height of that image")
    pixel_xyxy: tuple[float, float, float, float]
    warnings: tuple[str, ...] = ()

    @property
    def is_degenerate(self) -> bool:
        x0, y0, x1, y1 = self.pixel_xyxy
        return x1 <= x0 or y1 <= y0


class GroundingSkill(Skill):
    name = "grounding"
    description = "Locate each phrase the model boxed: crops, an annotated image and COCO JSON."
    consumes = frozenset({"box"})
    preferred_variant = "seed_x_i"
    deadline_s = 30.0
    action_types = {"locate": Locate}

    def __init__(self) -> None:
        # actions of one turn share coco.json; an abandoned (overrunning) action must not
        # interleave its write with the next one
        self._lock = threading.Lock()

    def build_prompt(self, request):
        return None  # SEED-X grounds whatever the user asks ("Where is the red car?") as is

    def to_actions(self, reply: SkillReply) -> list[Action]:
        actions = []
        for index, box in enumerate(reply.placed_boxes()):
            if box.pixel_xyxy is None or box.target_image is None:
                log.warning("box %d (%r) is on no known image; skipped", index, box.phrase)
                continue
            image = reply.image(box.target_image)
            size = (image.width, image.height) if image else None
            if size is None:  # the runtime placed it on a picture outside this turn
                log.warning("box %d (%r) is on an image outside the turn; skipped", index,
                            box.phrase)
                continue
            locate = Locate(index=index, phrase=box.phrase, bins=box.bins,
                            image_id=box.target_image, image_size=size,
                            pixel_xyxy=box.pixel_xyxy, warnings=box.warnings)
            if locate.is_degenerate:
                locate = locate.model_copy(update={"warnings": (
                    *locate.warnings, f"box {index} ({locate.phrase or UNNAMED}) has no area "
                    f"on its {size[0]}x{size[1]} image; not cropped or annotated")})
            actions.append(self.make_action("locate", locate))
        return actions

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        box: Locate = self.parse_payload(action)
        image = context.get_image(box.image_id).convert("RGB")
        if image.size != box.image_size:
            raise ValueError(f"image {box.image_id[:12]} is {image.size}, the box was placed "
                             f"on {box.image_size}")
        out = Path(context.artifact_dir)
        artifacts = []
        if not box.is_degenerate:
            crop_path = out / f"crop_{box.index:02d}_{_slug(box.phrase or UNNAMED)}.png"
            image.crop(crop_box(box.pixel_xyxy)).save(crop_path)
            artifacts.append(crop_path)
        with self._lock:
            coco = _load_coco(out / COCO_NAME)
            _upsert(coco, box)
            annotated = out / f"annotated_{box.image_id[:12]}.png"
            draw_boxes(image, coco, box.image_id).save(annotated)
            write_json(out / COCO_NAME, coco, indent=1)  # never half a file, even on a crash
        artifacts += [annotated, out / COCO_NAME]
        x0, y0, x1, y1 = box.pixel_xyxy
        message = f"{box.phrase or UNNAMED}: ({x0:.0f}, {y0:.0f}) to ({x1:.0f}, {y1:.0f})"
        return ActionResult(message=message, artifacts=tuple(artifacts), warnings=box.warnings)


def crop_box(xyxy: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """The whole-pixel region that covers a box (outward rounding, so nothing is cut off)."""
    x0, y0, x1, y1 = xyxy
    return math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1)


def colour(category_id: int) -> tuple[int, int, int]:
    return PALETTE[(category_id - 1) % len(PALETTE)]


def draw_boxes(image: Image.Image, coco: dict, image_id: str) -> Image.Image:
    """A copy of ``image`` with the COCO annotations of ``image_id``: outlines and labels."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    names = {c["id"]: c["name"] for c in coco["categories"]}
    coco_image = next(i for i in coco["images"] if i["seedx_image_id"] == image_id)
    width = max(2, round(min(canvas.size) / 200))
    for ann in coco["annotations"]:
        if ann["image_id"] != coco_image["id"]:
            continue
        x, y, w, h = ann["bbox"]
        x0, y0 = round(x), round(y)
        x1, y1 = max(x0, round(x + w) - 1), max(y0, round(y + h) - 1)
        rgb = colour(ann["category_id"])
        draw.rectangle((x0, y0, x1, y1), outline=rgb, width=width)
        # the label sits on a band above the box (inside it when the box touches the top), so
        # it never hides the box's left, right or bottom edge
        label = names[ann["category_id"]]
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        band_h = bottom - top + 4
        band_y = y0 - band_h if y0 >= band_h else y0 + width
        draw.rectangle((x0, band_y, x0 + right - left + 4, band_y + band_h - 1), fill=rgb)
        draw.text((x0 + 2 - left, band_y + 2 - top), label, fill=(255, 255, 255), font=font)
    return canvas


def _load_coco(path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    return {"info": {"description": "SEED-X grounding", "version": "1.0"},
            "images": [], "annotations": [], "categories": []}


def _upsert(coco: dict, box: Locate) -> None:
    """Add ``box`` (its image, its category, its annotation) to ``coco``, replacing a previous
    annotation of the same box so an action re-run does not duplicate it."""
    image = next((i for i in coco["images"] if i["seedx_image_id"] == box.image_id), None)
    if image is None:
        image = {"id": len(coco["images"]) + 1, "file_name": f"{box.image_id}.png",
                 "width": box.image_size[0], "height": box.image_size[1],
                 "seedx_image_id": box.image_id}
        coco["images"].append(image)
    coco["annotations"] = [a for a in coco["annotations"] if a["seedx_box_index"] != box.index]
    if box.is_degenerate:
        return
    name = box.phrase or UNNAMED
    category = next((c for c in coco["categories"] if c["name"] == name), None)
    if category is None:
        category = {"id": len(coco["categories"]) + 1, "name": name}
        coco["categories"].append(category)
    x0, y0, x1, y1 = box.pixel_xyxy
    coco["annotations"].append({
        "id": box.index + 1, "image_id": image["id"], "category_id": category["id"],
        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
        "seedx_box_index": box.index, "seedx_bins": list(box.bins)})
    coco["annotations"].sort(key=lambda a: a["id"])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or UNNAMED


@hookimpl
def register_skills(register):
    register(GroundingSkill())
