"""Scores for ``seedx eval nano``: each compares one Nano answer with the world's ground truth.

Text answers are parsed with the canonical formats of ``tasks``; pictures are read with the
model-free ``analyser`` (tolerant thresholds by default, since they are the Nano's outputs).
Pictures may come back at another size than their input (the de-tokenizer draws at its own
resolution), so positions and boxes are compared in normalised coordinates, and PSNR is taken
after resizing the output to the input's size.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .analyser import Detection, analyse, analyse_person
from .world import COLOURS, SHAPES, Box, Edit, Garment, Scene, position_of_box

UNCHANGED_IOU = 0.5    # an object "stays" when its box overlaps the old one this much (normalised)
PSNR_CAP = 100.0       # dB reported for identical pixels (keeps averages finite)


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def grounding_iou(pred_boxes: Sequence[Box], gt_bboxes: Sequence[Box]) -> float:
    """Mean IoU over one-to-one matches (greedy, best pairs first), divided by the larger of the
    two counts: a missing box and a spurious box both count as IoU 0. Nothing to find and
    nothing found scores 1."""
    if not gt_bboxes and not pred_boxes:
        return 1.0
    pairs = sorted(((iou(p, g), i, j) for i, p in enumerate(pred_boxes)
                    for j, g in enumerate(gt_bboxes)), reverse=True)
    used_p, used_g, total = set(), set(), 0.0
    for value, i, j in pairs:
        if i not in used_p and j not in used_g:
            used_p.add(i)
            used_g.add(j)
            total += value
    return total / max(len(pred_boxes), len(gt_bboxes))


# --- text answers ---------------------------------------------------------------------------------

_MENTION = re.compile(r"\b(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")s?\b")
_NUMBER_WORDS = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                 "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
_NUMBER = re.compile(r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")\b")


def parse_caption(text: str) -> list[tuple[str, str]]:
    """Every "<colour> <shape>" mention, in order: the canonical caption "A red circle and a
    blue square." gives [("red", "circle"), ("blue", "square")]. Box markup is ignored."""
    plain = re.sub(r"<[^>]*>", " ", text).lower()
    return [(m.group(1), m.group(2)) for m in _MENTION.finditer(plain)]


def caption_attr_accuracy(pred_text: str, scene: Scene) -> float:
    """Per object: its colour and shape are mentioned together. Matched objects divided by the
    larger of (objects, mentions), so invented objects cost as much as missed ones."""
    gt = Counter((o.colour, o.shape) for o in scene.objects)
    pred = Counter(parse_caption(pred_text))
    n = max(sum(gt.values()), sum(pred.values()))
    if n == 0:
        return 1.0
    return sum((gt & pred).values()) / n


def parse_count(text: str) -> int | None:
    """The first number in the answer, as digits or a word ("There are 3 shapes.", "no")."""
    m = _NUMBER.search(re.sub(r"<[^>]*>", " ", text).lower())
    if m is None:
        return None
    word = m.group(1)
    return int(word) if word.isdigit() else _NUMBER_WORDS[word]


def count_correct(pred_text: str, scene: Scene) -> bool:
    return parse_count(pred_text) == len(scene.objects)


# --- picture answers ------------------------------------------------------------------------------


def _normalised(box: Sequence[float], width: float, height: float) -> Box:
    return (box[0] / width, box[1] / height, box[2] / width, box[3] / height)


def t2i_correct(image: Image.Image, colour: str, shape: str, position: str | None = None, *,
                tolerant: bool = True) -> bool:
    """The main (largest) object has the colour and shape (and lies in ``position``), and no
    other object is half its size or more."""
    found = sorted(analyse(image, tolerant=tolerant), key=lambda d: -d.area)
    if not found:
        return False
    main = found[0]
    if len(found) > 1 and found[1].area >= 0.5 * main.area:
        return False
    if (main.colour, main.shape) != (colour, shape):
        return False
    return position is None or position_of_box(main.bbox, image.width, image.height) == position


def _as_edit(edit: Edit | dict[str, Any]) -> Edit:
    return edit if isinstance(edit, Edit) else Edit(**edit)


def edit_correct(source_scene: Scene, edited_image: Image.Image, edit: Edit | dict[str, Any], *,
                 tolerant: bool = True) -> bool:
    """The target has the requested colour / is gone / lies in the requested region, and every
    other object is still there with its colour, shape and place (normalised IoU >= 0.5), with
    nothing added."""
    edit = _as_edit(edit)
    w, h = edited_image.size
    found: list[Detection] = analyse(edited_image, tolerant=tolerant)
    unused = list(range(len(found)))

    def take(colour: str, shape: str, old_box: Box | None, position: str | None) -> bool:
        for k in unused:
            d = found[k]
            if (d.colour, d.shape) != (colour, shape):
                continue
            if old_box is not None and iou(_normalised(d.bbox, w, h), old_box) < UNCHANGED_IOU:
                continue
            if position is not None and position_of_box(d.bbox, w, h) != position:
                continue
            unused.remove(k)
            return True
        return False

    for i, obj in enumerate(source_scene.objects):
        old = _normalised(obj.bbox, source_scene.width, source_scene.height)
        if i != edit.index:
            ok = take(obj.colour, obj.shape, old, None)
        elif edit.kind == "recolor":
            ok = take(edit.colour, obj.shape, old, None)
        elif edit.kind == "move":
            ok = take(obj.colour, obj.shape, None, edit.position)
        elif edit.kind == "remove":
            ok = True
        else:
            raise ValueError(f"unknown edit kind {edit.kind!r}")
        if not ok:
            return False
    return not unused


def psnr_outside(source_image: Image.Image, edited_image: Image.Image,
                 target_bbox: Box | Iterable[Box]) -> float:
    """PSNR (dB) of the pixels outside the edited object's box(es), at the source's resolution
    (the output is resized to it, bilinear). ``target_bbox`` is one box or several (a move
    changes the old and the new place). Identical pixels give PSNR_CAP."""
    boxes = [target_bbox] if isinstance(target_bbox[0], (int, float)) else list(target_bbox)
    src = np.asarray(source_image.convert("RGB"), dtype=np.float64)
    out = edited_image.convert("RGB")
    if out.size != source_image.size:
        out = out.resize(source_image.size, Image.BILINEAR)
    out = np.asarray(out, dtype=np.float64)
    keep = np.ones(src.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        keep[max(0, math.floor(y0)):math.ceil(y1), max(0, math.floor(x0)):math.ceil(x1)] = False
    if not keep.any():
        return PSNR_CAP
    mse = float(((src[keep] - out[keep]) ** 2).mean())
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def tryon_correct(image: Image.Image, garment: Garment, *, check_pattern: bool = False) -> bool:
    """The shirt has the garment's colour (the issue's criterion); ``check_pattern`` also asks
    for its pattern, which only survives in sharp pictures."""
    reading = analyse_person(image)
    if reading.colour != garment.colour:
        return False
    return not check_pattern or reading.pattern == garment.pattern
