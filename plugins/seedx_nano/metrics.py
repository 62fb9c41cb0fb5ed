"""Scores for ``seedx eval nano``: each compares one Nano answer with the world's ground truth.

Text answers are parsed with the canonical formats of ``tasks``; pictures are read with the
model-free ``analyser`` (tolerant thresholds by default, since they are the Nano's outputs).
Pictures may come back at another size than their input (the de-tokenizer draws at its own
resolution), so positions and boxes are compared in normalised coordinates, and PSNR is taken
after resizing the output to the input's size. A slide's layout boxes are read from the reply's
bins on the slide's own canvas, whatever picture the session placed them on.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from .analyser import Detection, analyse, analyse_person
from .world import COLOURS, POSITIONS, SHAPES, Box, Edit, Garment, Scene, position_of_box

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


# --- the designer's tasks: slides, posters, improvements, stories ---------------------------------
#
# These score the variants the layout, poster, design-review and storytelling skills stand on.
# Each asks for the text *and* the picture to be right where the task has both: a reply that
# names the right object over a wrong picture (or the reverse) is what a skill cannot use.

SLIDE_REGIONS = ("title", "text", "picture")
_TAG = re.compile(r"<[^>]*>")
_LAYOUT = re.compile(r"\blayout\s*:", re.I)
_OBJECT = r"(" + "|".join(COLOURS) + r")\s+(" + "|".join(SHAPES) + r")"
_POSITION = r"(" + "|".join(POSITIONS) + r")"


def _plain(text: str) -> str:
    return " ".join(_TAG.sub(" ", text).split())


def parse_layout(markup: str, width: float, height: float) -> dict[str, Box]:
    """The region boxes of the reply's "Layout:" line ("title <box>, text <box>, picture <box>"),
    in pixels of a ``width`` x ``height`` canvas, by region name (a region without a well-formed
    box right after its name is absent). ``markup`` is the reply with its boxes as tokens."""
    from .tasks import parse_boxes

    found = list(_LAYOUT.finditer(markup))
    if not found:
        return {}
    line = markup[found[-1].end():]
    out: dict[str, Box] = {}
    for region in SLIDE_REGIONS:
        m = re.search(rf"\b{region}\s*(<box_start>.*?<box_end>)", line, re.S)
        boxes = parse_boxes(m.group(1), width, height) if m else []
        if boxes:
            out[region] = boxes[0]
    return out


def slide_layout_iou(markup: str, truth: Sequence[Box], size: tuple[float, float]) -> float:
    """Mean IoU of the title, text and picture boxes of the "Layout:" line with the true regions
    (``truth`` in SLIDE_REGIONS order, on the ``size`` canvas); a missing region counts 0."""
    boxes = parse_layout(markup, *size)
    return sum(iou(boxes[r], t) if r in boxes else 0.0
               for r, t in zip(SLIDE_REGIONS, truth)) / len(SLIDE_REGIONS)


def parse_slide_text(text: str) -> tuple[str | None, list[str]]:
    """(title, bullets) of a slide reply: "Title: X" then "- bullet" items, up to "Layout:".
    Whitespace is normalised first, so the items read the same whether the lines survived
    decoding as newlines or as spaces."""
    body = _LAYOUT.split(_TAG.sub(" ", text))[0]
    items = re.split(r"(?:^|\s)-\s+", " ".join(body.split()))
    head, bullets = items[0].strip(), [b.strip() for b in items[1:] if b.strip()]
    m = re.fullmatch(r"Title:\s*(.+)", head)
    return (m.group(1) if m else None), bullets


def slide_text_correct(text: str, colour: str, shape: str) -> bool:
    """The title is "{Colour} {shape}s" and the bullets are exactly the slide rule's, in order
    (``tasks.slide_bullets``)."""
    from .tasks import slide_bullets

    title, bullets = parse_slide_text(text)
    return title == f"{colour.capitalize()} {shape}s" and bullets == slide_bullets(colour, shape)


def intent_names(text: str, colour: str, shape: str) -> bool:
    """The reply names the requested object and no other ("A large red circle in the
    middle, ...")."""
    mentions = parse_caption(text)
    return bool(mentions) and all(m == (colour, shape) for m in mentions)


def poster_correct(text: str, image: Image.Image | None, colour: str, shape: str) -> bool:
    """The picture's main object has the colour and shape (`t2i_correct`: the unsaturated title
    bar is not an object to the analyser) and the reply's intent names both."""
    return (image is not None and intent_names(text, colour, shape)
            and t2i_correct(image, colour, shape))


_SUGGESTIONS = (
    ("recolor", re.compile(rf"\bmake the (?:{_OBJECT}|(?P<bare>" + "|".join(SHAPES) + r"))\s+("
                           + "|".join(COLOURS) + r")\b")),
    ("remove", re.compile(rf"\bremove the {_OBJECT}\b")),
    ("move", re.compile(rf"\bmove the {_OBJECT} to the {_POSITION}\b")),
)


def parse_edit(text: str, scene: Scene, prefer: int | None = None) -> Edit | None:
    """The first edit the text asks for ("Make the red circle blue ...", "Make the circle blue",
    "Remove the red circle ...", "Move the red circle to the center ..."), as an `Edit` of
    ``scene``, or None when it names no object of the scene or asks for nothing (a recolour to
    the colour it has, a move to where it is or to where it cannot go).

    A phrase that fits several objects means ``prefer`` when that is one of them (the object
    the rule meant: a reply that follows the rule gets the rule's edit), else the leftmost."""
    plain = _plain(text).lower()
    hits = [(m.start(), kind, m) for kind, pattern in _SUGGESTIONS
            for m in [pattern.search(plain)] if m is not None]
    if not hits:
        return None
    _, kind, m = min(hits, key=lambda h: h[0])
    if kind == "recolor":
        colour, shape = (None, m.group("bare")) if m.group("bare") else (m.group(1), m.group(2))
        new = m.groups()[-1]
    else:
        colour, shape = m.group(1), m.group(2)
    fits = [i for i in scene.left_to_right() if scene.objects[i].shape == shape
            and (colour is None or scene.objects[i].colour == colour)]
    if not fits:
        return None
    i = prefer if prefer in fits else fits[0]
    obj = scene.objects[i]
    if kind == "recolor":
        return None if new == obj.colour else Edit("recolor", i, colour=new)
    if kind == "remove":
        return Edit("remove", i)
    edit = Edit("move", i, position=m.group(3))
    if edit.position == position_of_box(obj.bbox, scene.width, scene.height):
        return None
    return edit if edit.apply(scene) is not None else None


def improve_correct(text: str, scene: Scene, image: Image.Image | None,
                    rule: Edit | None = None) -> bool:
    """The suggestion is a valid edit of the scene (`parse_edit`) and the returned picture
    applies exactly that edit (`edit_correct`)."""
    edit = parse_edit(text, scene, prefer=rule.index if rule is not None else None)
    return edit is not None and image is not None and edit_correct(scene, image, edit)


_STORY = re.compile(rf"\bthe {_OBJECT} moves? to the {_POSITION}\b")


def parse_story(text: str) -> tuple[str, str, str] | None:
    """(colour, shape, position) of "Then the {colour} {shape} moves to the {position}."."""
    m = _STORY.search(_plain(text).lower())
    return (m.group(1), m.group(2), m.group(3)) if m else None


def story_move(text: str, scene: Scene, rule: Edit) -> Edit | None:
    """The move the sentence tells, when it is about the object the story rule moves
    (``tasks.story_step``) and sends it somewhere it is not: that object, to the named region."""
    told = parse_story(text)
    obj = scene.objects[rule.index]
    if told is None or told[:2] != (obj.colour, obj.shape):
        return None
    if told[2] == position_of_box(obj.bbox, scene.width, scene.height):
        return None
    return Edit("move", rule.index, position=told[2])


def story_correct(text: str, scene: Scene, image: Image.Image | None, rule: Edit) -> bool:
    """The sentence moves the rule's object (`story_move`), and the next scene keeps every
    object (colour, shape, place) and has that one in the region the sentence names."""
    edit = story_move(text, scene, rule)
    return edit is not None and image is not None and edit_correct(scene, image, edit)
