"""Parts as chat messages: what the model said, with its boxes drawn on the picture they are on.

Gradio's chat shows files by path, so every picture a message shows is written once as a PNG
under ``picture_dir`` (named by content, so showing a turn again writes nothing new). A picture
with boxes is a new PNG with the boxes and their labels drawn in; the message text names each
box with its pixel coordinates, so the answer reads well even where pictures do not load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, ImageDraw

from seedx_agent.types import BoxPart, ImagePart, Part, TextPart

BOX_COLOURS = ("#e4572e", "#17bebb", "#ffc914", "#76b041", "#2e282a")

Message = dict[str, Any]
GetImage = Callable[[str], Image.Image]


class PictureFiles:
    """Writes the pictures the chat shows, under one folder the server is allowed to serve."""

    def __init__(self, picture_dir: Path, get_image: GetImage):
        self.dir = Path(picture_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.get_image = get_image

    def plain(self, image_id: str) -> str:
        path = self.dir / f"{image_id}.png"
        if not path.exists():
            self.get_image(image_id).save(path)
        return str(path)

    def with_boxes(self, image_id: str, boxes: Sequence[BoxPart]) -> str:
        key = hashlib.sha256(repr([(b.pixel_xyxy, b.phrase) for b in boxes]).encode()).hexdigest()
        path = self.dir / f"boxes-{image_id[:16]}-{key[:16]}.png"
        if not path.exists():
            draw_boxes(self.get_image(image_id), boxes).save(path)
        return str(path)


def draw_boxes(image: Image.Image, boxes: Sequence[BoxPart]) -> Image.Image:
    """``image`` with each box outlined and labelled; lines scale with the picture so a box stays
    visible on the Nano's small pictures and on large photos alike."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(canvas.size) / 128))
    for n, box in enumerate(boxes):
        colour = BOX_COLOURS[n % len(BOX_COLOURS)]
        x0, y0, x1, y1 = box.pixel_xyxy
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        label = box_label(box, n)
        draw.text((x0 + width + 1, y0 + width), label, fill=colour)
    return canvas


def box_label(box: BoxPart, n: int) -> str:
    return box.phrase or f"box {n + 1}"


def describe_box(box: BoxPart, n: int) -> str:
    if box.pixel_xyxy is None:
        return f"[{box_label(box, n)}]"
    x0, y0, x1, y1 = (round(v) for v in box.pixel_xyxy)
    return f"[{box_label(box, n)}: {x0}, {y0}, {x1}, {y1}]"


def user_messages(text: str, image_paths: Sequence[str]) -> list[Message]:
    messages: list[Message] = [{"role": "user", "content": {"path": str(p)}} for p in image_paths]
    if text:
        messages.append({"role": "user", "content": text})
    return messages


def answer_messages(parts: Sequence[Part], pictures: PictureFiles) -> list[Message]:
    """The assistant's messages for one turn: its words (boxes named inline with their pixels),
    then each picture it made, then each picture its boxes are on, drawn with them (a slide's
    layout boxes are on the slide it drew: both are shown)."""
    words: list[str] = []
    made: list[str] = []
    boxes_on: dict[str, list[BoxPart]] = {}
    boxes_seen = 0
    for part in parts:
        if isinstance(part, TextPart):
            words.append(part.text)
        elif isinstance(part, BoxPart):
            words.append(" " + describe_box(part, boxes_seen))
            boxes_seen += 1
            if part.pixel_xyxy is not None and part.target_image:
                boxes_on.setdefault(part.target_image, []).append(part)
        elif isinstance(part, ImagePart) and part.role != "input":
            made.append(part.image_id)
    messages: list[Message] = []
    text = "".join(words).strip()
    if text:
        messages.append({"role": "assistant", "content": text})
    for image_id in made:
        messages.append({"role": "assistant", "content": {"path": pictures.plain(image_id)}})
    for image_id, boxes in boxes_on.items():
        messages.append({"role": "assistant",
                         "content": {"path": pictures.with_boxes(image_id, boxes)}})
    return messages


def progress_message(index: int, step: int, total: int) -> Message:
    """The denoising of picture ``index``: a collapsible note that stays once the picture is
    done, so the chat keeps how it was drawn."""
    progress = f"denoising step {step}/{total}"
    return {"role": "assistant", "content": progress,
            "metadata": {"title": f"Drawing picture {index + 1}: {progress}",
                         "status": "done" if step >= total else "pending"}}


def error_messages(errors: Sequence[Any]) -> list[Message]:
    return [{"role": "assistant", "content": f"⚠ {e.source}: {e.message}"} for e in errors]


def turn_messages(turn: Any, pictures: PictureFiles) -> list[Message]:
    """A stored turn (`seedx_agent.store.TurnRecord`) as the chat showed it."""
    request = turn.request
    messages = user_messages(request.text, [pictures.plain(i) for i in request.image_ids])
    messages += answer_messages(turn.parts, pictures)
    messages += error_messages(turn.errors)
    return messages
