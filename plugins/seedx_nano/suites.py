"""The suites of ``seedx eval nano``: which held-out scenes, what is asked, how an answer scores.

Kept apart from the running (``evaluate``) so that the scoring of a suite can be read, and
checked against the ground truth, without a model: everything here is a function of a scene's
seed and of the answer's text, boxes and picture.

A suite's scene ``k`` comes from ``random.Random(suite_seed(suite, k))``: the seeds start at
``EVAL_BASE = tasks.EVAL_SEED_BASE + 3 * 10**8``, each suite at its own offset (``SUITE_STRIDE``
apart, so up to a million scenes each never overlap), above everything training draws
(``tasks.EVAL_SEED_BASE`` and up are never trained on; training's own held-out sets sit below
``EVAL_BASE`` and at ``tasks.EVAL_SEED_BASE + 5 * 10**8``), and below the render-defaults
sweep's (``sweep.SWEEP_BASE``). The same seed is the de-tokenizer's noise seed for that scene.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator

from PIL import Image

from . import metrics, tasks
from .analyser import analyse

EVAL_BASE = tasks.EVAL_SEED_BASE + 3 * 10**8
SUITE_STRIDE = 10**6
GT_THRESHOLD = 0.99
GT_LAYOUT_IOU = 0.95  # the true layout after 224-bin rounding (measured >= 0.98 on 64 px pages)
TEXT_TOKENS = 48      # the longest canonical text answer is ~20 tokens
IMAGE_TOKENS = 64     # answer text + <img> + 16 placeholders + </img>
SLIDE_TOKENS = 128    # a slide's text (<= 60 tokens; 95 with the bundled tiny tokenizer) + picture

# The thresholds: a metric meets its threshold when its point estimate at n = 200
# reaches it (the standard error is reported beside it, not subtracted).
THRESHOLDS: dict[str, float] = {
    "grounding_miou": 0.7, "caption_attr_acc": 0.9, "count_acc": 0.9, "t2i_attr_acc": 0.8,
    "edit_acc": 0.8, "edit_psnr_outside": 25.0, "tryon_acc": 0.8,
    "slide_layout_miou": 0.7, "slide_text_acc": 0.8, "poster_acc": 0.8, "improve_acc": 0.8,
    "story_acc": 0.8,
}


@dataclass(frozen=True)
class Suite:
    """One kind of held-out request: its seed offset, the metrics it yields, the training stages
    and the variant it needs, and how its turn is sent (reply budget, an edit turn or not)."""

    offset: int
    keys: tuple[str, ...]
    needs: tuple[str, ...]
    variant: str
    max_new_tokens: int = TEXT_TOKENS
    picture: bool = False    # scored on a picture it returns (canvas ceiling, picture count)
    edit: bool = False


SUITES: dict[str, Suite] = {
    "grounding": Suite(0, ("grounding_miou",), ("vit", "llm"), tasks.TASKS["where"]),
    "caption": Suite(1 * SUITE_STRIDE, ("caption_attr_acc",), ("vit", "llm"),
                     tasks.TASKS["describe"]),
    "count": Suite(2 * SUITE_STRIDE, ("count_acc",), ("vit", "llm"), tasks.TASKS["count"]),
    "t2i": Suite(3 * SUITE_STRIDE, ("t2i_attr_acc",), ("llm", "vae", "detok1"),
                 tasks.TASKS["draw"], IMAGE_TOKENS, picture=True),
    "edit": Suite(4 * SUITE_STRIDE, ("edit_acc", "edit_psnr_outside"),
                  ("vit", "llm", "vae", "detok2"), tasks.TASKS["edit_recolor"], IMAGE_TOKENS,
                  picture=True, edit=True),
    "tryon": Suite(5 * SUITE_STRIDE, ("tryon_acc",), ("vit", "llm", "vae", "detok2"),
                   tasks.TASKS["tryon"], IMAGE_TOKENS, picture=True),
    "slide": Suite(6 * SUITE_STRIDE, ("slide_layout_miou", "slide_text_acc"), ("llm", "lora"),
                   tasks.TASKS["slide"], SLIDE_TOKENS),
    "poster": Suite(7 * SUITE_STRIDE, ("poster_acc",), ("llm", "lora", "vae", "detok1"),
                    tasks.TASKS["poster"], IMAGE_TOKENS, picture=True),
    "improve": Suite(8 * SUITE_STRIDE, ("improve_acc",), ("vit", "llm", "lora", "vae", "detok2"),
                     tasks.TASKS["improve"], IMAGE_TOKENS, picture=True, edit=True),
    "story": Suite(9 * SUITE_STRIDE, ("story_acc",), ("vit", "llm", "lora", "vae", "detok1"),
                   tasks.TASKS["story"], IMAGE_TOKENS, picture=True),
}
METRIC_KEYS = tuple(key for suite in SUITES.values() for key in suite.keys)
assert METRIC_KEYS[:7] == ("grounding_miou", "caption_attr_acc", "count_acc", "t2i_attr_acc",
                           "edit_acc", "edit_psnr_outside", "tryon_acc")  # what consumers read
assert set(METRIC_KEYS) == set(THRESHOLDS)
EDIT_TASKS = ("edit_recolor", "edit_remove", "edit_move")
# the text half of the suites whose metric asks for text and picture together (diagnostics:
# the ground truth replayed through a random de-tokenizer must get these right)
TEXT_PARTS: dict[str, tuple[str, ...]] = {
    "poster": ("intent_names_it",), "improve": ("suggestion_valid", "suggestion_is_rule"),
    "story": ("sentence_right",),
}


# --- the held-out scenes --------------------------------------------------------------------------

def suite_seed(suite: str, k: int) -> int:
    """Scene ``k``'s seed: it draws the scene and seeds the de-tokenizer's noise for it."""
    return EVAL_BASE + SUITES[suite].offset + k


def eval_example(suite: str, k: int) -> tasks.Example:
    """Scene ``k`` of ``suite`` as a canonical ``tasks.Example`` (deterministic)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; expected one of {tuple(SUITES)}")
    rng = random.Random(suite_seed(suite, k))
    if suite == "grounding":
        return tasks.make_example("where", rng)
    if suite == "caption":
        return tasks.make_example("describe", rng)
    if suite == "t2i":
        return tasks.make_example("draw", rng, position=None)  # "Draw a {colour} {shape}."
    if suite == "edit":
        return tasks.make_example(EDIT_TASKS[k % len(EDIT_TASKS)], rng)
    if suite == "improve":  # a third of each flaw, as the edits
        return tasks.make_example("improve", rng, kind=tasks.IMPROVEMENT_KINDS[k % 3])
    return tasks.make_example(suite, rng)  # count, tryon, slide, poster, story


def eval_examples(suite: str, n: int) -> Iterator[tasks.Example]:
    return (eval_example(suite, k) for k in range(n))


# --- scoring one answer ----------------------------------------------------------------------------

@dataclass
class Answer:
    """What one turn gave back: its text (tags removed), the text with its boxes written back as
    tokens (``markup``, where the layout is read), the boxes in pixels of what they were
    placed on, the picture, and the de-tokenizer settings it was drawn with."""

    text: str = ""
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    image: Image.Image | None = None
    error: str | None = None
    markup: str = ""
    seed: int | None = None
    rendered_with: dict[str, Any] | None = None   # the picture's provenance (rendering fields)


def _rule_edit(ex: tasks.Example):
    return ex.meta.get("edit")


def score(suite: str, ex: tasks.Example, answer: Answer) -> dict[str, float | None]:
    """The suite's metrics for one answer (None: not measurable, e.g. PSNR without a picture)."""
    if suite == "grounding":
        return {"grounding_miou": metrics.grounding_iou(answer.boxes, ex.meta["boxes"])}
    if suite == "caption":
        return {"caption_attr_acc": metrics.caption_attr_accuracy(answer.text, ex.meta["scene"])}
    if suite == "count":
        return {"count_acc": float(metrics.count_correct(answer.text, ex.meta["scene"]))}
    if suite == "t2i":
        ok = answer.image is not None and metrics.t2i_correct(
            answer.image, ex.meta["colour"], ex.meta["shape"])
        return {"t2i_attr_acc": float(ok)}
    if suite == "edit":
        if answer.image is None:
            return {"edit_acc": 0.0, "edit_psnr_outside": None}
        return {"edit_acc": float(metrics.edit_correct(ex.meta["scene"], answer.image, ex.meta["edit"])),
                "edit_psnr_outside": metrics.psnr_outside(ex.images[0], answer.image,
                                                          ex.meta["changed_boxes"])}
    if suite == "tryon":
        ok = answer.image is not None and metrics.tryon_correct(answer.image, ex.meta["garment"])
        return {"tryon_acc": float(ok)}
    if suite == "slide":
        markup = answer.markup or answer.text
        return {"slide_layout_miou": metrics.slide_layout_iou(markup, ex.meta["boxes"],
                                                              ex.meta["box_size"]),
                "slide_text_acc": float(metrics.slide_text_correct(
                    answer.text, ex.meta["colour"], ex.meta["shape"]))}
    if suite == "poster":
        return {"poster_acc": float(metrics.poster_correct(
            answer.text, answer.image, ex.meta["colour"], ex.meta["shape"]))}
    if suite == "improve":
        return {"improve_acc": float(metrics.improve_correct(
            answer.text, ex.meta["scene"], answer.image, _rule_edit(ex)))}
    if suite == "story":
        return {"story_acc": float(metrics.story_correct(
            answer.text, ex.meta["scene"], answer.image, _rule_edit(ex)))}
    raise ValueError(suite)


def text_parts(suite: str, ex: tasks.Example, answer: Answer) -> dict[str, float]:
    """The text half of a text-and-picture metric on its own (`TEXT_PARTS`): tells a wrong
    reply from a wrong picture, and lets a replay of the true text prove the parsing."""
    if suite == "poster":
        return {"intent_names_it": float(metrics.intent_names(answer.text, ex.meta["colour"],
                                                              ex.meta["shape"]))}
    if suite == "improve":
        rule = _rule_edit(ex)
        edit = metrics.parse_edit(answer.text, ex.meta["scene"], prefer=rule.index)
        return {"suggestion_valid": float(edit is not None),
                "suggestion_is_rule": float(edit == rule)}
    if suite == "story":
        move = metrics.story_move(answer.text, ex.meta["scene"], _rule_edit(ex))
        return {"sentence_right": float(move is not None)}
    return {}


def ground_truth_answer(suite: str, ex: tasks.Example, canvas: int | None = None) -> Answer:
    """The right answer to ``ex`` (exact renders; boxes from the scene). ``canvas``: pictures go
    through a ``canvas`` x ``canvas`` square and come back at the size the session returns (the
    best a model drawing on that canvas can do)."""
    image = ex.answer_image
    if image is not None and canvas is not None:
        image = through_canvas(image, canvas, ex.images[0].size if ex.condition_image else None)
    boxes = [tuple(b) for b in ex.meta.get("boxes", [])] if suite == "grounding" else []
    return Answer(text=ex.answer_text, boxes=boxes, image=image, markup=ex.answer_text)


def through_canvas(image: Image.Image, canvas: int, source_size: tuple[int, int] | None) -> Image.Image:
    """``image`` squeezed to the de-tokenizer's square and given back like the session gives
    an edit back: in the source's shape, the square's side as its long side
    (the session's rule for edits)."""
    square = image.convert("RGB").resize((canvas, canvas), Image.Resampling.BICUBIC)
    if source_size is None:
        return square
    w, h = source_size
    scale = canvas / max(w, h)
    return square.resize((max(1, round(w * scale)), max(1, round(h * scale))))


def reads_scene(scene, image) -> list[bool]:
    """Does the analyser find exactly ``scene``'s objects in ``image`` (a drawing of it)? One
    check per object (its colour and shape, box IoU >= 0.5), and one for finding nothing else."""
    pool = list(analyse(image, tolerant=True))
    checks = []
    for obj in scene.objects:
        hit = next((d for d in pool if (d.colour, d.shape) == (obj.colour, obj.shape)
                    and metrics.iou(d.bbox, obj.bbox) >= 0.5), None)
        checks.append(hit is not None)
        if hit is not None:
            pool.remove(hit)
    return [*checks, not pool]


def analyser_checks(suite: str, ex: tasks.Example, canvas: int | None = None) -> list[bool]:
    """Does the model-free scoring give full marks to the ground truth of ``ex``?

    Comprehension scenes: the analyser finds exactly the scene's objects (colour, shape, box
    IoU >= 0.5). Pictures: the suite's own scoring of the true picture. Text answers: the
    canonical parsers read back the true answer (a box rounded to 224 bins still has IoU >= 0.5;
    a slide's layout, IoU >= GT_LAYOUT_IOU).
    """
    if suite in ("grounding", "caption", "count"):
        scene = ex.meta["scene"]
        checks = reads_scene(scene, scene.render())
        truth = ground_truth_answer(suite, ex)
        if suite == "grounding":
            parsed = tasks.parse_boxes(ex.answer_text, scene.width, scene.height)
            checks.append(metrics.grounding_iou(parsed, ex.meta["boxes"]) >= 0.5)
        else:
            checks.append(next(iter(score(suite, ex, truth).values())) == 1.0)
        return checks
    truth = ground_truth_answer(suite, ex, canvas)
    scores = score(suite, ex, truth)
    if suite == "slide":
        return [scores["slide_text_acc"] == 1.0, scores["slide_layout_miou"] >= GT_LAYOUT_IOU]
    checks = [scores[SUITES[suite].keys[0]] == 1.0]
    return checks + [v == 1.0 for v in text_parts(suite, ex, truth).values()]
