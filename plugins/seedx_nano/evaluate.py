"""``seedx eval nano``: score SEED-X Nano on held-out scenes, through the product path.

Every request goes through what a user of the agent runs, the public API only: a runtime from
``seedx_agent.from_pretrained`` (or the Nano preset's loader for an export folder), a fresh
session per scene and ``session.ask`` with the canonical phrasings of ``tasks`` (the variant that
answers each task in ``tasks.TASKS``) and `TurnOptions` fields as keywords (``variant``,
``max_new_tokens``, ``seed``, ``edit``). Answers are scored with ``metrics`` (the suites:
``suites``): text by the canonical formats, pictures by the model-free ``analyser`` (tolerant
thresholds). Each metric is the mean over its scenes, reported with its standard error and
against the issue's threshold (``THRESHOLDS``; met when the point estimate reaches it).

=====================  ==========  ==============================================================
metric                 threshold   request, and what counts as right
=====================  ==========  ==============================================================
``grounding_miou``     >= 0.7      "Where is the {colour} {shape}?": IoU of the reply's box (placed
                                   on the input image by the session) with the object's box; no
                                   box counts IoU 0
``caption_attr_acc``   >= 0.9      "Describe the image.": per object, colour and shape named
                                   together (``metrics.caption_attr_accuracy``: invented objects
                                   cost as missed ones)
``count_acc``          >= 0.9      "How many shapes are there?": the number in the reply is right
``t2i_attr_acc``       >= 0.8      "Draw a {colour} {shape}.": the analyser finds that colour and
                                   shape as the main object of the drawn picture (no picture: wrong)
``edit_acc``           >= 0.8      "Make the {shape} {colour}." / "Remove the {colour} {shape}." /
                                   "Move the {colour} {shape} to the {region}." (in turn),
                                   ``edit=True`` on ``seed_x_edit``: the target has the requested
                                   colour / is gone / is in the region, every other object
                                   unchanged, nothing added
``edit_psnr_outside``  >= 25 dB    PSNR outside the edited object's box(es), at the input's
                                   resolution, over the edits that returned a picture
``tryon_acc``          >= 0.8      person + garment, "Put this garment on the person." on
                                   ``tryon``: the shirt has the garment's colour
``slide_layout_miou``  >= 0.7      "Make a slide about {colour} {shape}s." on ``slide``: mean IoU
                                   of the title, text and picture boxes of the reply's "Layout:"
                                   line with the true regions, on the slide's canvas (a missing
                                   region counts 0)
``slide_text_acc``     >= 0.8      the same replies: the title and every bullet exactly the
                                   slide rule's, in order
``poster_acc``         >= 0.8      "Design a poster with a {colour} {shape}." on ``designer``: the
                                   picture's main object has that colour and shape AND the reply's
                                   intent names that object (and no other)
``improve_acc``        >= 0.8      a flawed scene, "How could this image be improved?" on
                                   ``designer`` with ``edit=True`` (a third of each flaw): the
                                   suggestion parses as a valid edit of the scene AND the returned
                                   picture applies exactly that edit
``story_acc``          >= 0.8      a scene, "Continue the story." on ``story``: the sentence moves
                                   the object the story rule moves, to a region it is not in, AND
                                   the next scene keeps every other object and has that one there
=====================  ==========  ==============================================================

Held-out: scene ``k`` of a suite comes from ``random.Random(EVAL_BASE + suite offset + k)``,
with ``EVAL_BASE = tasks.EVAL_SEED_BASE + 3 * 10**8``; training draws none of these seeds. The
same seed is the turn's ``seed=``, so the de-tokenizer's noise differs from scene to scene (one
fixed seed would draw every picture from the same noise) and each picture can be made again.
Each metric uses ``n`` scenes (default 200); ``smoke`` uses ``SMOKE_N``.

Steps and guidance are never passed: the turn leaves them unset, so the runtime's
``render_defaults`` apply, the very values a user's turn gets. For the Nano the preset fills
them from the manifest's ``render_defaults``, which the held-out sweep (``sweep``,
``seedx eval nano --sweep``) writes: one source. The report records them
(``EvalReport.render_defaults``), and each suite what its pictures' provenance says they were
drawn with (``details[suite]["rendered_with"]``).

A second column: the grounding, caption and count scenes are asked again with the same scene
drawn by `other_renderer` (anti-aliased, other shades, turned triangles, shifted backgrounds;
never used in training), so a model that learned the training renderer's pixels instead of the
world shows it (``EvalReport.other_renderer``, ``other_renderer`` in ``--json``).

A metric whose component (from ``nano_manifest.json``'s finished stages) or variant is missing,
or whose every turn failed, is None, with the reason in ``EvalReport.reasons`` (the CLI prints it
on stderr).

The analyser check: the same scoring functions on the ground-truth answers of the same scenes
(the exact renders) must score >= 99 % (``analyser_gt_acc``); ``canvas_ceiling`` is what a
perfect model could score through the Nano's square canvas (the ground truth squeezed to the
de-tokenizer's size and given back at the size the session returns edits at).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import tasks
from .manifest import WEIGHTS_DIR, read_manifest
from .other_renderer import render_other
from .suites import (EDIT_TASKS, EVAL_BASE, GT_THRESHOLD, METRIC_KEYS, SUITES, TEXT_PARTS,
                     THRESHOLDS, Answer, Suite, analyser_checks, eval_example, eval_examples,
                     ground_truth_answer, score, suite_seed, text_parts, through_canvas)

if TYPE_CHECKING:
    from seedx_agent import Runtime

__all__ = ["EDIT_TASKS", "EVAL_BASE", "GT_THRESHOLD", "METRIC_KEYS", "SUITES", "THRESHOLDS",
           "Answer", "EvalReport", "Suite", "analyser_checks", "ask", "eval_example",
           "eval_examples", "evaluate", "format_report", "ground_truth_answer", "mean_and_se",
           "run_cli", "score", "suite_seed", "text_parts", "through_canvas"]

NANO = "nano"
DEFAULT_N = 200
SMOKE_N = 3
RENDER_FIELDS = ("num_inference_steps", "guidance_scale", "image_guidance_scale")
# Suites whose input is a scene: each is also asked on the scene drawn by `other_renderer`.
OTHER_RENDERER_SUITES = ("grounding", "caption", "count")


def mean_and_se(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, standard error, n) of the measured values (None skipped). The standard error is
    the std of the values over sqrt(n) (std with divisor n): for 0/1 accuracies that is the
    binomial sqrt(p (1 - p) / n)."""
    got = [float(v) for v in values if v is not None]
    if not got:
        return None, None, 0
    n = len(got)
    mean = sum(got) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in got) / n / n)
    return round(mean, 4), round(se, 4), n


# --- running the model ------------------------------------------------------------------------------

@dataclass
class EvalReport:
    scores: dict[str, float | None]              # exactly METRIC_KEYS
    standard_errors: dict[str, float | None] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)     # scenes each metric was measured on
    reasons: dict[str, str] = field(default_factory=dict)   # metric -> why it is None
    analyser_gt_acc: float | None = None
    canvas_ceiling: dict[str, float] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # suite -> n, seconds, ...
    model: str = ""
    n: int = 0
    render_defaults: dict[str, Any] = field(default_factory=dict)  # what unset turns drew with
    # the same scenes drawn by `other_renderer` (never trained on): metric -> (mean, se, n)
    other_renderer: dict[str, tuple[float | None, float | None, int]] = field(default_factory=dict)

    @property
    def meets(self) -> dict[str, bool | None]:
        """Per metric: does the point estimate reach its threshold (None: not measured)."""
        return {k: None if self.scores.get(k) is None else self.scores[k] >= THRESHOLDS[k]
                for k in METRIC_KEYS}

    def to_json(self) -> dict[str, Any]:
        """The metrics first, as flat keys (what consumers read), then nested records."""
        out: dict[str, Any] = {k: self.scores[k] for k in METRIC_KEYS}
        out.update(standard_errors={k: self.standard_errors.get(k) for k in METRIC_KEYS},
                   n={k: self.counts.get(k, 0) for k in METRIC_KEYS},
                   thresholds=dict(THRESHOLDS), meets=self.meets,
                   analyser_gt_acc=self.analyser_gt_acc, render_defaults=dict(self.render_defaults),
                   other_renderer={k: v[0] for k, v in self.other_renderer.items()},
                   other_renderer_standard_errors={k: v[1] for k, v in self.other_renderer.items()})
        return out


class _Log:
    def __init__(self, stream) -> None:
        self.stream = stream

    def __call__(self, message: str) -> None:
        if self.stream is not None:
            print(f"[eval] {message}", file=self.stream, flush=True)


def _missing(suite: str, finished: set[str] | None, runtime: "Runtime") -> str | None:
    spec = SUITES[suite]
    if finished is not None:
        absent = [s for s in spec.needs if s not in finished]
        if absent:
            return f"not trained yet: {', '.join(absent)} (nano_manifest.json)"
    if spec.variant not in runtime.variants:
        return f"no variant {spec.variant!r} in this model"
    return None


def _markup(parts: list) -> str:
    """The reply's text with its boxes written back as tokens, in reply order."""
    from seedx_agent import BoxPart, TextPart

    out = []
    for p in parts:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, BoxPart):
            out.append("<box_start>" + "".join(f"<loc-{b}>" for b in p.bins) + "<box_end>")
    return "".join(out)


def ask(runtime: "Runtime", suite: str, ex: tasks.Example, *, seed: int | None = None,
        render: dict[str, Any] | None = None) -> Answer:
    """One turn of ``ex`` on a fresh session, as a user of the agent would send it.

    ``seed`` is the de-tokenizer's noise seed for this scene. Steps and guidance stay unset, so
    the runtime's render defaults apply, unless ``render`` names them: only the sweep does, since
    choosing them is its job."""
    from seedx_agent import BoxPart, ImagePart, TextPart

    spec = SUITES[suite]
    session = runtime.open_session(variant=spec.variant)
    options: dict[str, Any] = dict(variant=spec.variant, max_new_tokens=spec.max_new_tokens,
                                   seed=seed, **(render or {}))
    if spec.edit:
        options["edit"] = True
    done = session.ask(ex.instruction, list(ex.images), **options)
    answer = Answer(seed=seed)
    if done.errors:
        answer.error = "; ".join(f"{e.source}: {e.message}" for e in done.errors)
    parts = list(done.parts)
    answer.text = "".join(p.text for p in parts if isinstance(p, TextPart))
    answer.markup = _markup(parts)
    answer.boxes = [p.pixel_xyxy for p in parts
                    if isinstance(p, BoxPart) and p.pixel_xyxy is not None]
    made = [p for p in parts if isinstance(p, ImagePart) and p.role != "input"]
    if made:
        answer.image = session.get_image(made[0].image_id)
        if made[0].provenance is not None:
            answer.rendered_with = {k: getattr(made[0].provenance, k)
                                    for k in ("seed", *RENDER_FIELDS)}
    return answer


def drawing_defaults(runtime: "Runtime") -> dict[str, Any]:
    """The runtime's render defaults a turn that leaves them unset draws with (the seed aside:
    the eval gives each scene its own)."""
    defaults = runtime.render_defaults.model_dump()
    return {k: defaults[k] for k in RENDER_FIELDS}


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
    canvas = int(runtime.config.image_size)

    report = EvalReport(scores={k: None for k in METRIC_KEYS}, model=runtime.name, n=n,
                        standard_errors={k: None for k in METRIC_KEYS},
                        counts={k: 0 for k in METRIC_KEYS}, render_defaults=drawing_defaults(runtime))
    d = report.render_defaults
    say(f"drawing with the model's render defaults: {d['num_inference_steps']} steps, guidance "
        f"{d['guidance_scale']}, image guidance {d['image_guidance_scale']}; seed: the scene's")
    gt_checks: list[bool] = []
    for suite in suites or tuple(SUITES):
        gt_checks += _run_suite(runtime, suite, n, finished, canvas, report, say, on_answer)
    report.analyser_gt_acc = _mean(gt_checks)
    return report


def _run_suite(runtime: "Runtime", suite: str, n: int, finished: set[str] | None, canvas: int,
               report: EvalReport, say: _Log, on_answer) -> list[bool]:
    """Run one suite into ``report``; returns its analyser checks on the ground truth."""
    spec = SUITES[suite]
    keys = spec.keys
    examples = list(eval_examples(suite, n))
    checks = [c for ex in examples for c in analyser_checks(suite, ex)]
    ceiling = None
    if spec.picture:
        ceiling = _mean([c for ex in examples for c in analyser_checks(suite, ex, canvas)])
        report.canvas_ceiling[keys[0]] = ceiling
    seeds = [suite_seed(suite, 0), suite_seed(suite, n - 1)]
    reason = _missing(suite, finished, runtime)
    if reason is not None:
        for key in keys:
            report.reasons[key] = reason
        say(f"{', '.join(keys)}: skipped ({reason})")
        report.details[suite] = dict(n=0, skipped=reason, analyser_gt_acc=_mean(checks))
        return checks
    say(f"{', '.join(keys)}: {n} held-out scenes (seeds {seeds[0]}...{seeds[1]}), "
        f"variant {spec.variant}")
    started = time.monotonic()
    values: dict[str, list[float]] = {k: [] for k in keys}
    other: dict[str, list[float]] = {k: [] for k in keys} if suite in OTHER_RENDERER_SUITES else {}
    parts: dict[str, list[float]] = {k: [] for k in TEXT_PARTS.get(suite, ())}
    rendered: list[dict[str, Any]] = []
    errors, images, first_error = 0, 0, None
    for k, ex in enumerate(examples):
        answer = ask(runtime, suite, ex, seed=suite_seed(suite, k))
        errors += answer.error is not None
        first_error = first_error or answer.error
        images += answer.image is not None
        if answer.rendered_with is not None:
            drawn = {f: answer.rendered_with[f] for f in RENDER_FIELDS}
            if drawn not in rendered:
                rendered.append(drawn)
        for key, value in score(suite, ex, answer).items():
            if value is not None:
                values[key].append(value)
        for key, value in text_parts(suite, ex, answer).items():
            parts[key].append(value)
        if other:  # the same scene and question, the picture drawn the other way
            redrawn = replace(ex, images=[render_other(ex.meta["scene"], suite_seed(suite, k))])
            for key, value in score(suite, redrawn, ask(runtime, suite, redrawn,
                                                        seed=suite_seed(suite, k))).items():
                if value is not None:
                    other[key].append(value)
        if on_answer is not None:
            on_answer(suite, k, ex, answer)
        if (k + 1) % 25 == 0 and k + 1 < n:
            so_far = ", ".join(f"{key} {_fmt(_mean(v))}" for key, v in values.items())
            say(f"  {k + 1}/{n} {so_far} ({time.monotonic() - started:.0f} s)")
    seconds = time.monotonic() - started
    for key in keys:
        mean, se, count = mean_and_se(values[key])
        report.scores[key], report.standard_errors[key], report.counts[key] = mean, se, count
        if errors == n:
            report.scores[key] = report.standard_errors[key] = None
            report.reasons[key] = f"every turn failed (first: {first_error})"
        elif mean is None:
            report.reasons[key] = "no scene gave a measurable answer (no picture came back)"
    for key, got in other.items():
        report.other_renderer[key] = mean_and_se(got)
    report.details[suite] = dict(
        n=n, seeds=seeds, seconds=round(seconds, 2), turn_errors=errors,
        pictures=images, analyser_gt_acc=_mean(checks), canvas_ceiling=ceiling,
        rendered_with=rendered, text_parts={key: _mean(v) for key, v in parts.items()})
    for key in other:
        mean, se, _ = report.other_renderer[key]
        say(f"{key} on the other renderer: {_fmt(mean)} ± {_fmt(se)}")
    say(f"{', '.join(f'{key} {_fmt_se(report, key)}' for key in keys)} "
        f"({n} scenes, {seconds:.1f} s, {seconds / max(1, n):.2f} s/scene"
        + (f", {images} pictures" if spec.picture else "")
        + (f", {errors} failed turns" if errors else "") + ")")
    return checks


def _mean(values: list) -> float | None:
    return mean_and_se(values)[0]


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _fmt_se(report: EvalReport, key: str) -> str:
    value, se = report.scores[key], report.standard_errors.get(key)
    if value is None:
        return "null"
    unit = " dB" if key == "edit_psnr_outside" else ""
    digits = 2 if unit else 4
    return f"{value:.{digits}f} ± {(se or 0.0):.{digits}f}{unit}"


def _load(model: str | Path | None) -> "Runtime":
    import seedx_agent

    # an export folder is claimed by the Nano preset (`preset.is_nano_folder`), as for any user
    return seedx_agent.from_pretrained(NANO if model is None else str(model))


def _model_root(model: str | Path | None) -> Path | None:
    """The folder whose manifest describes ``model`` (None: a preset that is not the Nano)."""
    if model is None or str(model) == NANO:
        return WEIGHTS_DIR
    return Path(model) if Path(model).exists() else None


# --- the command ------------------------------------------------------------------------------------

def format_report(report: EvalReport) -> str:
    d = report.render_defaults
    lines = [f"SEED-X Nano evaluation: model {report.model!r}, {report.n} held-out scenes per "
             f"metric (seeds from {EVAL_BASE}, one per scene: it draws the scene and seeds its "
             "picture)"]
    if d:
        lines.append(f"pictures drawn with the model's render defaults: "
                     f"{d['num_inference_steps']} steps, guidance {d['guidance_scale']}, "
                     f"image guidance {d['image_guidance_scale']}")
    lines += ["", f"  {'metric':<20} {'mean ± standard error':<22} threshold   met  "
                  "other renderer"]
    meets = report.meets
    for key in METRIC_KEYS:
        threshold = THRESHOLDS[key]
        shown = _fmt_se(report, key)
        wanted = f">= {threshold:g}" + (" dB" if key == "edit_psnr_outside" else "")
        met = {True: "yes", False: "no", None: "-"}[meets[key]]
        extra = f"  ({report.reasons[key]})" if key in report.reasons else ""
        mean, se, _ = report.other_renderer.get(key, (None, None, 0))
        second = f"{mean:.4f} ± {se:.4f}" if mean is not None else ""
        lines.append(f"  {key:<20} {shown:<22} {wanted:<11} {met:<4} {second}{extra}")
    if report.n < DEFAULT_N:
        lines.append(f"  (n = {report.n} < {DEFAULT_N}: \"met\" is indicative; a threshold is "
                     f"judged on the n = {DEFAULT_N} point estimate)")
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
