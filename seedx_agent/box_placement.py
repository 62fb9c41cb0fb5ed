"""Which picture a box is on, and where it is in that picture's pixels.

SEED-X's boxes are relative (224 bins of *some* image) and do not say which. The rule, used for
every reply before skills see it:

1. a box whose ``target_image`` the runtime already set keeps it;
2. otherwise it refers to the **last input image of the turn** (the picture the user asked
   about: "where is the dog in this photo?"). A turn that brings no picture and draws none is
   about the latest picture of the conversation, which the session passes as the turn's input
   ("Where is the dog?" after the photo came in an earlier turn);
3. a turn without input images can only be about a picture the model drew: the first generated
   image after the box, else the last one before it;
4. otherwise (and for layout boxes on a ``canvas``) the box is returned unplaced
   (``pixel_xyxy`` None).

Pixels are computed on the chosen image's own size, so a box on a 640x320 input is not
stretched by the square view the ViT saw.
"""

from __future__ import annotations

from collections.abc import Sequence

from seedx_agent.types import BoxPart, ImagePart, Part


def place_boxes(parts: Sequence[Part], input_images: Sequence[ImagePart]) -> list[BoxPart]:
    """Every ``BoxPart`` of ``parts``, in order, placed by the rule above."""
    images = {p.image_id: p for p in (*input_images, *(q for q in parts if isinstance(q, ImagePart)
                                                      and q.role != "input"))}
    placed = []
    last_input = input_images[-1] if input_images else None
    for i, part in enumerate(parts):
        if not isinstance(part, BoxPart):
            continue
        box = part
        if box.target_kind == "canvas" or (box.target_image and box.pixel_xyxy):
            placed.append(box)
            continue
        target = images.get(box.target_image) if box.target_image else last_input
        if target is None and not box.target_image:
            after = [p for p in parts[i + 1:] if isinstance(p, ImagePart)]
            before = [p for p in parts[:i] if isinstance(p, ImagePart)]
            target = (after[:1] or before[-1:] or [None])[0]
        if target is not None:
            kind = "input" if target.role == "input" else "generated"
            box = box.on(target.width, target.height, target_image=target.image_id,
                         target_kind=kind)
        placed.append(box)
    return placed
