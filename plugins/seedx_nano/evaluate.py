"""``seedx eval nano``: score SEED-X Nano on held-out scenes, through the product path.

Every request goes through what a user of the agent runs, the public API only: a runtime from
``seedx_agent.from_pretrained`` (or the Nano preset's loader for an export folder), a fresh
session per scene and ``session.ask`` with the canonical phrasings of ``tasks`` (the variant that
answers each task in ``tasks.TASKS``) and `TurnOptions` fields as keywords (``variant``,
``max_new_tokens``, ``num_inference_steps``, ``guidance_scale``, ``edit``). Answers are scored with ``metrics``: text
by the canonical formats, pictures by the model-free ``analyser`` (tolerant thresholds).

=====================  ===========================================================================
``grounding_miou``     "Where is the {colour} {shape}?": IoU of the reply's box (placed on the
                       input image by the session) with the object's box; no box counts IoU 0
``caption_attr_acc``   "Describe the image.": per object, colour and shape named together
                       (``metrics.caption_attr_accuracy``: invented objects cost as missed ones)
``count_acc``          "How many shapes are there?": the number in the reply is right
``t2i_attr_acc``       "Draw a {colour} {shape}.": the analyser finds that colour and shape as the
                       main object of the drawn picture (no drawn picture: wrong)
``edit_acc``           "Make the {shape} {colour}." / "Remove the {colour} {shape}." / "Move the
                       {colour} {shape} to the {region}." (in turn), ``edit=True`` on the
                       ``seed_x_edit`` variant: the target has the requested colour / is gone / is
                       in the region, every other object unchanged, nothing added
``edit_psnr_outside``  PSNR (dB) outside the edited object's box(es), at the input's resolution,
                       over the edits that returned a picture
``tryon_acc``          person + garment images, "Put this garment on the person." on the
                       ``tryon`` variant: the shirt has the garment's colour
=====================  ===========================================================================

Held-out: scene ``k`` of a suite comes from ``random.Random(EVAL_BASE + suite offset + k)``,
with ``EVAL_BASE = tasks.EVAL_SEED_BASE + 3 * 10**8``. Training draws only below
``tasks.EVAL_SEED_BASE`` (and its own held-out sets from other offsets), so none of these scenes
was trained on. Each metric uses ``n`` scenes (default 200); ``smoke`` uses ``SMOKE_N``.

A metric whose component (from ``nano_manifest.json``'s finished stages) or variant is missing,
or whose every turn failed, is None, with the reason in ``EvalReport.reasons`` (the CLI prints it
on stderr). Pictures are drawn with the manifest's render defaults (`manifest.render_defaults`).

The analyser check: the same scoring functions on the ground-truth answers of the same scenes
(the exact renders) must score >= 99 % (``analyser_gt_acc``); ``canvas_ceiling`` is what a
perfect model could score through the Nano's square canvas (the ground truth squeezed to the
de-tokenizer's size and given back at the size the session returns edits at).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from PIL import Image

from . import metrics, tasks
from .analyser import analyse
from .manifest import WEIGHTS_DIR, read_manifest, render_defaults

if TYPE_CHECKING:
    from seedx_agent import Runtime

NANO = "nano"

METRIC_KEYS = ("grounding_miou", "caption_attr_acc", "count_acc", "t2i_attr_acc", "edit_acc",
               "edit_psnr_outside", "tryon_acc")
DEFAULT_N = 200
SMOKE_N = 3
GT_THRESHOLD = 0.99
EVAL_BASE = tasks.EVAL_SEED_BASE + 3 * 10**8
TEXT_TOKENS = 48    # the longest canonical text answer is ~20 tokens
IMAGE_TOKENS = 64   # answer text + <img> + 16 placeholders + </img>

# suite -> (seed offset, metrics it yields, training stages it needs, variant that answers)
SUITES: dict[str, tuple[int, tuple[str, ...], tuple[str, ...], str]] = {
    "grounding": (0, ("grounding_miou",), ("vit", "llm"), tasks.TASKS["where"]),
    "caption": (1 * 10**6, ("caption_attr_acc",), ("vit", "llm"), tasks.TASKS["describe"]),
    "count": (2 * 10**6, ("count_acc",), ("vit", "llm"), tasks.TASKS["count"]),
    "t2i": (3 * 10**6, ("t2i_attr_acc",), ("llm", "vae", "detok1"), tasks.TASKS["draw"]),
    "edit": (4 * 10**6, ("edit_acc", "edit_psnr_outside"), ("vit", "llm", "vae", "detok2"),
             tasks.TASKS["edit_recolor"]),
    "tryon": (5 * 10**6, ("tryon_acc",), ("vit", "llm", "vae", "detok2"), tasks.TASKS["tryon"]),
}
EDIT_TASKS = ("edit_recolor", "edit_remove", "edit_move")


# --- the held-out scenes --------------------------------------------------------------------------

def suite_seed(suite: str, k: int) -> int:
    return EVAL_BASE + SUITES[suite][0] + k


def eval_example(suite: str, k: int) -> tasks.Example:
    """Scene ``k`` of ``suite`` as a canonical ``tasks.Example`` (deterministic)."""
    rng = random.Random(suite_seed(suite, k))
    if suite == "grounding":
        return tasks.make_example("where", rng)
    if suite == "caption":
        return tasks.make_example("describe", rng)
    if suite == "count":
        return tasks.make_example("count", rng)
    if suite == "t2i":
        return tasks.make_example("draw", rng, position=None)  # "Draw a {colour} {shape}."
    if suite == "edit":
        return tasks.make_example(EDIT_TASKS[k % len(EDIT_TASKS)], rng)
    if suite == "tryon":
        return tasks.make_example("tryon", rng)
    raise ValueError(f"unknown suite {suite!r}; expected one of {tuple(SUITES)}")


def eval_examples(suite: str, n: int) -> Iterator[tasks.Example]:
    return (eval_example(suite, k) for k in range(n))


# --- scoring one answer ----------------------------------------------------------------------------

@dataclass
class Answer:
    """What one turn gave back: its text, boxes (pixels on the input) and picture, if any."""

    text: str = ""
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    image: Image.Image | None = None
    error: str | None = None


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
    raise ValueError(suite)


def ground_truth_answer(suite: str, ex: tasks.Example, canvas: int | None = None) -> Answer:
    """The right answer to ``ex`` (exact renders; boxes from the scene). ``canvas``: pictures go
    through a ``canvas`` x ``canvas`` square and come back at the size the session returns (the
    best a model drawing on that canvas can do)."""
    image = ex.answer_image
    if image is not None and canvas is not None:
        image = through_canvas(image, canvas, ex.images[0].size if ex.condition_image else None)
    boxes = [tuple(b) for b in ex.meta.get("boxes", [])] if suite == "grounding" else []
    return Answer(text=ex.answer_text, boxes=boxes, image=image)


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


def analyser_checks(suite: str, ex: tasks.Example, canvas: int | None = None) -> list[bool]:
    """Does the model-free scoring give full marks to the ground truth of ``ex``?

    Comprehension scenes: the analyser finds exactly the scene's objects (colour, shape, box
    IoU >= 0.5). Pictures: the suite's own scoring of the true picture. Text answers: the
    canonical parsers read back the true answer (a box rounded to 224 bins still has IoU >= 0.5).
    """
    if suite in ("grounding", "caption", "count"):
        scene = ex.meta["scene"]
        found = analyse(scene.render(), tolerant=True)
        pool = list(found)
        checks = []
        for obj in scene.objects:
            hit = next((d for d in pool if (d.colour, d.shape) == (obj.colour, obj.shape)
                        and metrics.iou(d.bbox, obj.bbox) >= 0.5), None)
            checks.append(hit is not None)
            if hit is not None:
                pool.remove(hit)
        checks.append(not pool)
        truth = ground_truth_answer(suite, ex)
        if suite == "grounding":
            parsed = tasks.parse_boxes(ex.answer_text, scene.width, scene.height)
            checks.append(metrics.grounding_iou(parsed, ex.meta["boxes"]) >= 0.5)
        else:
            checks.append(next(iter(score(suite, ex, truth).values())) == 1.0)
        return checks
    truth = ground_truth_answer(suite, ex, canvas)
    scores = score(suite, ex, truth)
    key = SUITES[suite][1][0]
    return [scores[key] == 1.0]


# --- running the model ------------------------------------------------------------------------------

@dataclass
class EvalReport:
    scores: dict[str, float | None]              # exactly METRIC_KEYS
    reasons: dict[str, str] = field(default_factory=dict)   # metric -> why it is None
    analyser_gt_acc: float | None = None
    canvas_ceiling: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> n, seconds, ...
    model: str = ""
    n: int = 0

    def to_json(self) -> dict[str, float | None]:
        return {k: self.scores[k] for k in METRIC_KEYS}


class _Log:
    def __init__(self, stream) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        if self.stream is not None:
            print(f"[eval] {message}", file=self.stream, flush=True)


def _missing(suite: str, finished: set[str] | None, runtime: "Runtime") -> str | None:
    _, _, needs, variant = SUITES[suite]
    if finished is not None:
        absent = [s for s in needs if s not in finished]
        if absent:
            return f"not trained yet: {', '.join(absent)} (nano_manifest.json)"
    if variant not in runtime.variants:
        return f"no variant {variant!r} in this model"
    return None


def ask(runtime: "Runtime", suite: str, ex: tasks.Example, *, steps: int | None,
        guidance: float | None) -> Answer:
    """One turn of ``ex`` on a fresh session, as a user of the agent would send it (``steps`` /
    ``guidance`` None: the model's render defaults)."""
    from seedx_agent import BoxPart, ImagePart, TextPart

    variant = SUITES[suite][3]
    session = runtime.open_session(variant=variant)
    options: dict[str, Any] = dict(variant=variant)
    if suite in ("t2i", "edit", "tryon"):
        options.update(max_new_tokens=IMAGE_TOKENS, num_inference_steps=steps,
                       guidance_scale=guidance)
    else:
        options["max_new_tokens"] = TEXT_TOKENS
    if suite == "edit":
        options["edit"] = True
    done = session.ask(ex.instruction, list(ex.images), **options)
    answer = Answer()
    if done.errors:
        answer.error = "; ".join(f"{e.source}: {e.message}" for e in done.errors)
    answer.text = "".join(p.text for p in done.parts if isinstance(p, TextPart))
    answer.boxes = [p.pixel_xyxy for p in done.parts
                    if isinstance(p, BoxPart) and p.pixel_xyxy is not None]
    made = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
    if made:
        answer.image = session.get_image(made[0].image_id)
    return answer


def evaluate(model: str | Path | None = None, *, n: int = DEFAULT_N, smoke: bool = False,
             runtime: "Runtime | None" = None, suites: tuple[str, ...] | None = None,
             log: Any = "stderr", on_answer: Callable[[str, int, tasks.Example, Answer], None] | None = None
             ) -> EvalReport:
    """Score a Nano (``model``: the ``"nano"`` preset by default, or an export folder; or a
    ready ``runtime``) on ``n`` held-out scenes per metric (``smoke``: ``SMOKE_N``).

    Progress goes to ``log`` (a stream; None: quiet), one line per metric and every 25 scenes.
    ``on_answer(suite, k, example, answer)`` sees every answer (for sample sheets).
    """
    say = _Log(sys.stderr if log == "stderr" else log)
    n = SMOKE_N if smoke else n
    if runtime is None:
        runtime = _load(model)
    root = _model_root(model)
    manifest = read_manifest(root) if root is not None else None
    finished = set(manifest.get("finished_stages", ())) if manifest else None
    drawing = render_defaults(manifest)
    steps, guidance = drawing.get("num_inference_steps"), drawing.get("guidance_scale")
    canvas = int(runtime.config.image_size)

    report = EvalReport(scores={k: None for k in METRIC_KEYS}, model=runtime.name, n=n)
    gt_checks: list[bool] = []
    for suite in suites or tuple(SUITES):
        keys = SUITES[suite][1]
        examples = list(eval_examples(suite, n))
        checks = [c for ex in examples for c in analyser_checks(suite, ex)]
        gt_checks += checks
        ceiling = None
        if suite in ("t2i", "edit", "tryon"):
            ceiling = _mean([c for ex in examples for c in analyser_checks(suite, ex, canvas)])
            report.canvas_ceiling[keys[0]] = ceiling
        reason = _missing(suite, finished, runtime)
        if reason is not None:
            for key in keys:
                report.reasons[key] = reason
            say(f"{', '.join(keys)}: skipped ({reason})")
            report.details[suite] = dict(n=0, skipped=reason, analyser_gt_acc=_mean(checks))
            continue
        say(f"{', '.join(keys)}: {n} held-out scenes (seeds {suite_seed(suite, 0)}..."
            f"{suite_seed(suite, n - 1)}), variant {SUITES[suite][3]}")
        started = time.monotonic()
        values: dict[str, list[float]] = {k: [] for k in keys}
        errors, images, first_error = 0, 0, None
        for k, ex in enumerate(examples):
            answer = ask(runtime, suite, ex, steps=steps, guidance=guidance)
            errors += answer.error is not None
            first_error = first_error or answer.error
            images += answer.image is not None
            for key, value in score(suite, ex, answer).items():
                if value is not None:
                    values[key].append(value)
            if on_answer is not None:
                on_answer(suite, k, ex, answer)
            if (k + 1) % 25 == 0 and k + 1 < n:
                so_far = ", ".join(f"{key} {_fmt(_mean(v))}" for key, v in values.items())
                say(f"  {k + 1}/{n} {so_far} ({time.monotonic() - started:.0f} s)")
        seconds = time.monotonic() - started
        for key in keys:
            report.scores[key] = _mean(values[key])
            if errors == n:
                report.scores[key] = None
                report.reasons[key] = f"every turn failed (first: {first_error})"
            elif report.scores[key] is None:
                report.reasons[key] = "no scene gave a measurable answer (no picture came back)"
        report.details[suite] = dict(n=n, seconds=round(seconds, 2), turn_errors=errors,
                                     pictures=images if suite in ("t2i", "edit", "tryon") else None,
                                     analyser_gt_acc=_mean(checks), canvas_ceiling=ceiling)
        say(f"{', '.join(f'{key} {_fmt(report.scores[key])}' for key in keys)} "
            f"({n} scenes, {seconds:.1f} s, {seconds / max(1, n):.2f} s/scene"
            + (f", {images} pictures" if suite in ("t2i", "edit", "tryon") else "")
            + (f", {errors} failed turns" if errors else "") + ")")
    report.analyser_gt_acc = _mean(gt_checks)
    return report


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _load(model: str | Path | None) -> "Runtime":
    import seedx_agent

    from .preset import build_nano

    if model is None or str(model) == NANO:
        return seedx_agent.from_pretrained(NANO)
    root = Path(model)
    if read_manifest(root) is not None:  # an export folder: the Nano preset's loader
        return build_nano(root=root, name=str(root))
    return seedx_agent.from_pretrained(str(model))


def _model_root(model: str | Path | None) -> Path | None:
    """The folder whose manifest describes ``model`` (None: a preset that is not the Nano)."""
    if model is None or str(model) == NANO:
        return WEIGHTS_DIR
    return Path(model) if Path(model).exists() else None


# --- the command ------------------------------------------------------------------------------------

def format_report(report: EvalReport) -> str:
    lines = [f"SEED-X Nano evaluation: model {report.model!r}, {report.n} held-out scenes per "
             f"metric (seeds from {EVAL_BASE})", ""]
    for key in METRIC_KEYS:
        value = report.scores[key]
        shown = "null" if value is None else (f"{value:.2f} dB" if key == "edit_psnr_outside"
                                              else f"{value:.4f}")
        extra = f"  ({report.reasons[key]})" if key in report.reasons else ""
        lines.append(f"  {key:<20} {shown}{extra}")
    gt = report.analyser_gt_acc
    lines += ["", f"  {'analyser_gt_acc':<20} {'n/a' if gt is None else f'{gt:.4f}'}  "
                  f"(scoring of the ground truth of the same scenes; must be >= {GT_THRESHOLD})"]
    for key, value in report.canvas_ceiling.items():
        lines.append(f"  {'canvas_ceiling':<20} {key} {value:.4f}  (ground truth through the "
                     "de-tokenizer's square canvas)")
    return "\n".join(lines)


def run_cli(model: str | Path | None, *, n: int = DEFAULT_N, smoke: bool = False,
            as_json: bool = False, out: Any = None, err: Any = None) -> int:
    """``seedx eval nano``: 0 when it ran (whatever the scores) and the analyser check passed,
    1 when the analyser scored the ground truth below GT_THRESHOLD."""
    out, err = out or sys.stdout, err or sys.stderr
    report = evaluate(model, n=n, smoke=smoke, log=err)
    for key, reason in report.reasons.items():
        print(f"[eval] {key} is null: {reason}", file=err, flush=True)
    gt = report.analyser_gt_acc
    if as_json:
        print(json.dumps(report.to_json()), file=out, flush=True)
        print(f"[eval] analyser_gt_acc {gt}", file=err, flush=True)
    else:
        print(format_report(report), file=out, flush=True)
    if gt is not None and gt < GT_THRESHOLD:
        print(f"[eval] the analyser scored the ground truth {gt:.4f} < {GT_THRESHOLD}: the "
              "scores above are not trustworthy", file=err, flush=True)
        return 1
    return 0
