"""Canonical requests and answers over the Nano world (issue 4): what the Nano is taught to do.

Each task turns a random scene into an ``Example``: the input images, the user's instruction
(the trainer puts the image blocks first, as SEED-X-I does), the exact answer text with inline
``<box_start><loc-cx><loc-cy><loc-w><loc-h><box_end>`` boxes, and, when the answer ends with
an image run, that image (plus, for edits and try-on, the stage-2 condition image).

Answers are short and a deterministic function of the scene, so a small LLM can learn them:
objects are always listed left to right, a move always lands on the region's canonical spot,
drawings are one object of a fixed size on white, and "designer"/"story" answers follow fixed
rules (documented on each maker).

Boxes follow reference §8: 224 bins, ``clamp(int(v * 224), 0, 223)`` of the normalised centre
and size, x by width and y by height, relative to ``images[-1]``; for a slide (no input image)
they are relative to the answer canvas. Every example's ground-truth boxes are in
``meta["boxes"]`` (pixels) on a picture of ``meta["box_size"]``.

Held-out evaluation draws from disjoint seeds: example ``k`` of ``iter_examples(seed)`` comes
from ``random.Random(seed + k)``; training starts at ``TRAIN_SEED_BASE`` and uses fewer than
``EVAL_SEED_BASE`` examples, evaluation starts at ``EVAL_SEED_BASE``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from PIL import Image

from core_models.boxes import LOC_BINS, bins_to_xyxy, xyxy_to_bins

from .world import (COLOURS, PATTERNS, POSITIONS, SHAPES, Box, Edit, Garment, Obj, Page, Scene,
                    dress, place_among, position_of, random_person,
                    random_scene, shirt_region)

TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 10**9
GEN_SIZE = (64, 64)            # the size of pictures the Nano draws from text alone
DRAW_SIZE_FRACTION = 0.3       # a drawn object's size, of the shorter side
EDIT_RESPONSE = "Here is the edited image."

# The variant (LoRA adapter on one base) that answers each task.
TASKS: dict[str, str] = {
    "describe": "seed_x_i",
    "where": "seed_x_i",
    "find_all": "seed_x_i",
    "count": "seed_x_i",
    "draw": "seed_x_i",
    "edit_recolor": "seed_x_edit",
    "edit_remove": "seed_x_edit",
    "edit_move": "seed_x_edit",
    "tryon": "tryon",
    "slide": "slide",
    "story": "story",
    "poster": "designer",
    "improve": "designer",
}
# Mixing weights for ``sample_task``: more of what is hard to learn (grounding, drawing, edits).
TASK_WEIGHTS: dict[str, float] = {
    "describe": 1.0, "where": 1.5, "find_all": 1.0, "count": 0.75, "draw": 1.5,
    "edit_recolor": 1.0, "edit_remove": 0.75, "edit_move": 1.0, "tryon": 1.0,
    "slide": 0.5, "story": 0.5, "poster": 0.5, "improve": 0.5,
}


@dataclass
class Example:
    task: str
    variant: str
    images: list[Image.Image]
    instruction: str
    answer_text: str
    answer_image: Image.Image | None = None
    condition_image: Image.Image | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --- boxes ----------------------------------------------------------------------------------------


def loc_bins(bbox: Box, width: float, height: float) -> tuple[int, int, int, int]:
    """(cx, cy, w, h) of a pixel box in `LOC_BINS` bins of the picture (reference §8)."""
    return xyxy_to_bins(bbox, width, height)


def box_tokens(bbox: Box, width: float, height: float) -> str:
    a, b, c, d = loc_bins(bbox, width, height)
    return f"<box_start><loc-{a}><loc-{b}><loc-{c}><loc-{d}><box_end>"


_BOX = re.compile(r"<box_start>(.*?)<box_end>", re.S)
_LOC = re.compile(r"<loc-(\d+)>")


def parse_boxes(text: str, width: float, height: float) -> list[Box]:
    """Pixel boxes of every well-formed box in ``text`` (official decode: bin / 224 * size;
    tolerates spaces between the tokens; boxes without exactly four locs are skipped)."""
    boxes = []
    for inner in _BOX.findall(text):
        locs = [int(v) for v in _LOC.findall(inner)]
        if len(locs) != 4 or any(v >= LOC_BINS for v in locs):
            continue
        boxes.append(bins_to_xyxy(tuple(locs), width, height))
    return boxes


# --- canonical phrases ----------------------------------------------------------------------------


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def a_phrase(obj: Obj) -> str:
    return f"{article(obj.colour)} {obj.colour} {obj.shape}"


def caption(scene: Scene) -> str:
    """"A red circle." / "A red circle and a blue square." / "A red circle, a blue square and
    a green triangle.", objects left to right."""
    parts = [a_phrase(scene.objects[i]) for i in scene.left_to_right()]
    if not parts:
        return "An empty picture."
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text[0].upper() + text[1:] + "."


def count_sentence(n: int) -> str:
    return "There is 1 shape." if n == 1 else f"There are {n} shapes."


def located(obj: Obj, width: int, height: int) -> str:
    return f"The {obj.colour} {obj.shape} is at {box_tokens(obj.bbox, width, height)}."


def edit_instruction(scene: Scene, edit: Edit) -> str:
    obj = scene.objects[edit.index]
    if edit.kind == "recolor":
        return f"Make the {obj.shape} {edit.colour}."
    if edit.kind == "remove":
        return f"Remove the {obj.colour} {obj.shape}."
    if edit.kind == "move":
        return f"Move the {obj.colour} {obj.shape} to the {edit.position}."
    raise ValueError(f"unknown edit kind {edit.kind!r}")


def changed_boxes(scene: Scene, edit: Edit, edited: Scene) -> list[Box]:
    """Where an edit may change pixels: the target's old box, and its new one after a move."""
    boxes = [scene.objects[edit.index].bbox]
    if edit.kind == "move":
        boxes.append(edited.objects[edit.index].bbox)
    return boxes


# --- the makers -----------------------------------------------------------------------------------


def _scene(rng: random.Random, kw: dict, **defaults: Any) -> Scene:
    if kw.get("scene") is not None:
        return kw["scene"]
    args = {k: kw[k] for k in ("n_objects", "width", "height") if kw.get(k) is not None}
    return random_scene(rng, **{**defaults, **args})


def _scene_meta(scene: Scene, boxes: list[Box] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"scene": scene}
    if boxes is not None:
        meta.update(boxes=boxes, box_size=(scene.width, scene.height))
    return meta


def make_describe(rng: random.Random, **kw: Any) -> Example:
    scene = _scene(rng, kw)
    return Example("describe", TASKS["describe"], [scene.render()], "Describe the image.",
                   caption(scene), meta=_scene_meta(scene))


def make_where(rng: random.Random, **kw: Any) -> Example:
    scene = _scene(rng, kw)
    i = kw.get("index", rng.randrange(len(scene.objects)))
    obj = scene.objects[i]
    return Example("where", TASKS["where"], [scene.render()],
                   f"Where is the {obj.colour} {obj.shape}?",
                   located(obj, scene.width, scene.height),
                   meta={**_scene_meta(scene, [obj.bbox]), "index": i})


def make_find_all(rng: random.Random, **kw: Any) -> Example:
    """"Find all squares." -> one located sentence per square, left to right; "There are no
    squares." when there is none (20 % of requests ask for a shape that may be absent)."""
    scene = _scene(rng, kw)
    present = sorted({o.shape for o in scene.objects})
    shape = kw.get("shape") or (rng.choice(SHAPES) if rng.random() < 0.2 else rng.choice(present))
    order = [i for i in scene.left_to_right() if scene.objects[i].shape == shape]
    if order:
        answer = " ".join(located(scene.objects[i], scene.width, scene.height) for i in order)
    else:
        answer = f"There are no {shape}s."
    return Example("find_all", TASKS["find_all"], [scene.render()], f"Find all {shape}s.",
                   answer, meta={**_scene_meta(scene, [scene.objects[i].bbox for i in order]),
                                 "shape": shape})


def make_count(rng: random.Random, **kw: Any) -> Example:
    scene = _scene(rng, kw)
    return Example("count", TASKS["count"], [scene.render()], "How many shapes are there?",
                   count_sentence(len(scene.objects)),
                   meta={**_scene_meta(scene), "count": len(scene.objects)})


def drawn_scene(colour: str, shape: str, position: str | None = None,
                size: tuple[int, int] = GEN_SIZE) -> Scene:
    """The canonical picture of a drawing request: one object of DRAW_SIZE_FRACTION on white,
    in the middle or on the requested region's canonical spot."""
    w, h = size
    side = max(1, round(DRAW_SIZE_FRACTION * min(w, h)))
    obj = place_among(Obj(shape, colour, 0.0, 0.0, side), position or "center", w, h)
    return Scene(w, h, "white", (obj,))


def make_draw(rng: random.Random, **kw: Any) -> Example:
    """"Draw a red circle." or "Generate an image: a red circle on the left." (half each)."""
    colour = kw.get("colour") or rng.choice(list(COLOURS))
    shape = kw.get("shape") or rng.choice(SHAPES)
    positioned = kw["position"] is not None if "position" in kw else rng.random() < 0.5
    position = (kw.get("position") or rng.choice(POSITIONS)) if positioned else None
    scene = drawn_scene(colour, shape, position, kw.get("size", GEN_SIZE))
    a = article(colour)
    if position is None:
        instruction, answer = f"Draw {a} {colour} {shape}.", f"Here is {a} {colour} {shape}."
    else:
        instruction = f"Generate an image: {a} {colour} {shape} on the {position}."
        answer = f"Here is {a} {colour} {shape} on the {position}."
    return Example("draw", TASKS["draw"], [], instruction, answer, answer_image=scene.render(),
                   meta={**_scene_meta(scene), "colour": colour, "shape": shape,
                         "position": position})


def _edit_example(task: str, scene: Scene, edit: Edit, instruction: str, answer: str
                  ) -> Example:
    edited = edit.apply(scene)
    source = scene.render()
    return Example(task, TASKS[task], [source], instruction, answer,
                   answer_image=edited.render(), condition_image=source,
                   meta={**_scene_meta(scene), "edit": edit, "target_scene": edited,
                         "changed_boxes": changed_boxes(scene, edit, edited)})


def make_edit_recolor(rng: random.Random, **kw: Any) -> Example:
    """"Make the square red.": the target's shape is unique in the scene; the colour is new."""
    for _ in range(1000):
        scene = _scene(rng, kw)
        unique = [i for i, o in enumerate(scene.objects)
                  if sum(p.shape == o.shape for p in scene.objects) == 1]
        if unique:
            break
    else:
        raise ValueError("no object with a unique shape to recolor")
    i = rng.choice(unique)
    colour = rng.choice([c for c in COLOURS if c != scene.objects[i].colour])
    edit = Edit("recolor", i, colour=colour)
    return _edit_example("edit_recolor", scene, edit, edit_instruction(scene, edit), EDIT_RESPONSE)


def make_edit_remove(rng: random.Random, **kw: Any) -> Example:
    """"Remove the red circle." on scenes of 2-3 objects (something always remains)."""
    scene = _scene(rng, kw, n_objects=rng.randint(2, 3))
    edit = Edit("remove", rng.randrange(len(scene.objects)))
    return _edit_example("edit_remove", scene, edit, edit_instruction(scene, edit), EDIT_RESPONSE)


def make_edit_move(rng: random.Random, **kw: Any) -> Example:
    """"Move the red circle to the left.": a region it is not in yet, with room for it."""
    for _ in range(1000):
        scene = _scene(rng, kw)
        i = rng.randrange(len(scene.objects))
        here = position_of(scene.objects[i], scene)
        position = rng.choice([p for p in POSITIONS if p != here])
        edit = Edit("move", i, position=position)
        if edit.apply(scene) is not None:
            return _edit_example("edit_move", scene, edit, edit_instruction(scene, edit),
                                 EDIT_RESPONSE)
    raise ValueError("no possible move found")


def make_tryon(rng: random.Random, **kw: Any) -> Example:
    """Person and garment in; the person in that garment out (a garment of another colour)."""
    person = kw.get("person") or random_person(rng)
    garment = kw.get("garment") or Garment(
        rng.choice([c for c in COLOURS if c != person.shirt.colour]), rng.choice(PATTERNS))
    swatch_side = kw.get("swatch_size", rng.randint(48, 96))
    dressed = dress(person, garment)
    source = person.render()
    return Example("tryon", TASKS["tryon"], [source, garment.render(swatch_side)],
                   "Put this garment on the person.",
                   f"Here is the person wearing {article(garment.pattern)} {garment.phrase}.",
                   answer_image=dressed.render(), condition_image=source,
                   meta={"person": person, "garment": garment, "dressed": dressed,
                         "changed_boxes": [shirt_region(person)]})


WARM = ("red", "orange", "yellow")
SHAPE_FACTS = {
    "circle": ("Circles are round.",),
    "square": ("Squares have four equal sides.", "They have four corners."),
    "triangle": ("Triangles have three sides.", "They have three corners."),
}


def slide_bullets(colour: str, shape: str) -> list[str]:
    """Two bullets for circles, three for squares and triangles: shape facts, then the colour."""
    warmth = "warm" if colour in WARM else "cool"
    return [*SHAPE_FACTS[shape], f"{colour.capitalize()} is a {warmth} colour."]


def slide_page(colour: str, shape: str, size: tuple[int, int] = GEN_SIZE) -> Page:
    """Title bar across the top, bullet lines on the left, the picture on the right."""
    w, h = size
    n = len(slide_bullets(colour, shape))
    title = (round(0.08 * w), round(0.06 * h), round(0.92 * w), round(0.18 * h))
    text = (round(0.08 * w), round(0.30 * h), round(0.50 * w), round((0.30 + 0.13 * n) * h))
    picture = (round(0.56 * w), round(0.30 * h), round(0.92 * w), round(0.90 * h))
    side = round(0.8 * min(picture[2] - picture[0], picture[3] - picture[1]))
    obj = Obj(shape, colour, 0.0, 0.0, side).at(
        round((picture[0] + picture[2] - side) / 2), round((picture[1] + picture[3] - side) / 2))
    return Page(w, h, "white", title, text, n, (obj,))


def make_slide(rng: random.Random, **kw: Any) -> Example:
    """"Make a slide about red circles." -> title, bullets, the layout as boxes on the answer
    canvas (title, text, picture), then the slide itself."""
    colour = kw.get("colour") or rng.choice(list(COLOURS))
    shape = kw.get("shape") or rng.choice(SHAPES)
    page = slide_page(colour, shape, kw.get("size", GEN_SIZE))
    w, h = page.width, page.height
    picture_box = page.objects[0].bbox
    regions = [page.title_box, page.text_box, picture_box]
    lines = [f"Title: {colour.capitalize()} {shape}s",
             *(f"- {b}" for b in slide_bullets(colour, shape)),
             f"Layout: title {box_tokens(regions[0], w, h)}, text {box_tokens(regions[1], w, h)}, "
             f"picture {box_tokens(regions[2], w, h)}."]
    return Example("slide", TASKS["slide"], [], f"Make a slide about {colour} {shape}s.",
                   "\n".join(lines), answer_image=page.render(),
                   meta={"page": page, "colour": colour, "shape": shape, "boxes": regions,
                         "box_size": (w, h), "box_target": "answer"})


OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": "top"}


def story_step(scene: Scene) -> Edit | None:
    """The next scene of a story: the smallest object (ties: left to right) that can, moves to
    the opposite region (from the center it goes to the top)."""
    order = sorted(scene.left_to_right(), key=lambda i: scene.objects[i].size)
    for i in order:
        edit = Edit("move", i, position=OPPOSITE[position_of(scene.objects[i], scene)])
        if edit.apply(scene) is not None:
            return edit
    return None


def make_story(rng: random.Random, **kw: Any) -> Example:
    for _ in range(1000):
        scene = _scene(rng, kw)
        edit = story_step(scene)
        if edit is not None:
            break
    else:
        raise ValueError("no scene with a possible story step")
    obj = scene.objects[edit.index]
    edited = edit.apply(scene)
    return Example("story", TASKS["story"], [scene.render()], "Continue the story.",
                   f"Then the {obj.colour} {obj.shape} moves to the {edit.position}.",
                   answer_image=edited.render(),
                   meta={**_scene_meta(scene), "edit": edit, "target_scene": edited,
                         "changed_boxes": changed_boxes(scene, edit, edited)})


def poster_page(colour: str, shape: str, size: tuple[int, int] = GEN_SIZE) -> Page:
    """A bold title bar at the top and one large object centred below it."""
    w, h = size
    title = (round(0.15 * w), round(0.06 * h), round(0.85 * w), round(0.2 * h))
    side = round(0.45 * min(w, h))
    obj = Obj(shape, colour, 0.0, 0.0, side).at(round((w - side) / 2), round(0.6 * h - side / 2))
    return Page(w, h, "white", title, None, 0, (obj,))


def make_poster(rng: random.Random, **kw: Any) -> Example:
    colour = kw.get("colour") or rng.choice(list(COLOURS))
    shape = kw.get("shape") or rng.choice(SHAPES)
    page = poster_page(colour, shape, kw.get("size", GEN_SIZE))
    a = article(colour)
    return Example("poster", TASKS["poster"], [], f"Design a poster with {a} {colour} {shape}.",
                   f"A large {colour} {shape} in the middle, under a bold title.",
                   answer_image=page.render(),
                   meta={"page": page, "colour": colour, "shape": shape})


def improvement(scene: Scene) -> tuple[str, Edit] | None:
    """The designer's rule, first match wins:

    1. two objects share a colour -> recolour the later one (left to right) to the first
       palette colour the scene does not use;
    2. three objects -> remove the smallest (ties: leftmost);
    3. a single object off-centre -> move it to the center;
    otherwise nothing to improve (None).
    """
    order = scene.left_to_right()
    seen: set[str] = set()
    for i in order:
        obj = scene.objects[i]
        if obj.colour in seen:
            new = next(c for c in COLOURS if c not in {o.colour for o in scene.objects})
            return (f"Make the {obj.colour} {obj.shape} {new} so that every shape has its own "
                    "colour.", Edit("recolor", i, colour=new))
        seen.add(obj.colour)
    if len(order) == 3:
        i = min(order, key=lambda k: scene.objects[k].size)
        obj = scene.objects[i]
        return (f"Remove the {obj.colour} {obj.shape} to make the image less crowded.",
                Edit("remove", i))
    if len(order) == 1 and position_of(scene.objects[0], scene) != "center":
        obj = scene.objects[0]
        edit = Edit("move", 0, position="center")
        if edit.apply(scene) is not None:
            return f"Move the {obj.colour} {obj.shape} to the center to balance the image.", edit
    return None


IMPROVEMENT_KINDS = ("recolor", "remove", "move")


def make_improve(rng: random.Random, **kw: Any) -> Example:
    """A scene with a flaw of a randomly chosen kind, the rule's suggestion and its edit."""
    if kw.get("scene") is not None:
        scene, found = kw["scene"], improvement(kw["scene"])
        if found is None:
            raise ValueError("the given scene has nothing to improve")
    else:
        kind = kw.get("kind") or rng.choice(IMPROVEMENT_KINDS)
        for _ in range(1000):
            scene = _scene(rng, kw)
            found = improvement(scene)
            if found is not None and found[1].kind == kind:
                break
        else:
            raise ValueError(f"no scene with an improvement of kind {kind!r}")
    sentence, edit = found
    return _edit_example("improve", scene, edit, "How could this image be improved?", sentence)


MAKERS: dict[str, Callable[..., Example]] = {
    "describe": make_describe, "where": make_where, "find_all": make_find_all,
    "count": make_count, "draw": make_draw, "edit_recolor": make_edit_recolor,
    "edit_remove": make_edit_remove, "edit_move": make_edit_move, "tryon": make_tryon,
    "slide": make_slide, "story": make_story, "poster": make_poster, "improve": make_improve,
}
assert set(MAKERS) == set(TASKS) == set(TASK_WEIGHTS)


def make_example(task: str, rng: random.Random, **kw: Any) -> Example:
    """One example of ``task``. Keyword arguments pin parts of it (``scene``, ``n_objects``,
    ``width``, ``height``, ``colour``, ``shape``, ``position``, ``size``, ``person``,
    ``garment``, ``index``, ``kind``), where the task uses them."""
    if task not in MAKERS:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(MAKERS)}")
    return MAKERS[task](rng, **kw)


def sample_task(rng: random.Random, tasks: Iterable[str] | None = None) -> str:
    names = list(tasks) if tasks is not None else list(TASK_WEIGHTS)
    return rng.choices(names, weights=[TASK_WEIGHTS[t] for t in names])[0]


def example_for_seed(seed: int, tasks: Iterable[str] | None = None) -> Example:
    rng = random.Random(seed)
    return make_example(sample_task(rng, tasks), rng)


def iter_examples(seed: int, tasks: Iterable[str] | None = None) -> Iterator[Example]:
    """Endless examples, deterministic by ``seed``: example k comes from seed + k."""
    tasks = list(tasks) if tasks is not None else None
    k = 0
    while True:
        yield example_for_seed(seed + k, tasks)
        k += 1
