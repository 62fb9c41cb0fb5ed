"""``seedx eval nano --sweep``: choose the Nano's steps and guidance on held-out scenes.

The evaluation never passes steps or guidance; it draws with the runtime's render defaults, which
the Nano preset reads from the manifest's ``render_defaults``. This sweep is what puts numbers
there: it scores every ``(num_inference_steps, guidance_scale)`` pair of a small grid on
"Draw a {colour} {shape}." scenes, then ``image_guidance_scale`` on edit scenes at the chosen
pair, and writes the winner into the model folder's ``nano_manifest.json`` with a record of how
it was chosen (``render_defaults_sweep``). Choosing on the evaluation's own scenes would tune to
them, so the sweep draws from seeds of its own (``SWEEP_BASE``: above every evaluation suite,
below training's held-out pairs at ``tasks.EVAL_SEED_BASE + 5 * 10**8``), never trained on.

Ties (equal point estimates) go to fewer steps, then to lower guidance: the cheaper picture, as
the difference is not measured.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from . import tasks
from .evaluate import _load, _model_root, ask, mean_and_se
from .manifest import MANIFEST_NAME, read_manifest, write_render_defaults
from .suites import EDIT_TASKS, SUITE_STRIDE, score

if TYPE_CHECKING:
    from seedx_agent import Runtime

SWEEP_BASE = tasks.EVAL_SEED_BASE + 4 * 10**8
SWEEP_N = 48
STEPS = (10, 20, 30)
GUIDANCES = (1.5, 3.0, 5.0, 7.5)
IMAGE_GUIDANCES = (1.0, 1.5, 2.0)
# what each part of the sweep asks and scores: (suite whose turn and scoring it uses, seed offset)
PARTS = {"t2i": ("t2i", 0), "edit": ("edit", SUITE_STRIDE)}


def sweep_seed(part: str, k: int) -> int:
    return SWEEP_BASE + PARTS[part][1] + k


def sweep_example(part: str, k: int) -> tasks.Example:
    rng = random.Random(sweep_seed(part, k))
    if part == "t2i":
        return tasks.make_example("draw", rng, position=None)
    return tasks.make_example(EDIT_TASKS[k % len(EDIT_TASKS)], rng)


@dataclass
class SweepResult:
    model: str
    n: int
    grid: dict[str, list[float]]
    points: list[dict[str, Any]] = field(default_factory=list)        # steps x guidance, on t2i
    image_points: list[dict[str, Any]] = field(default_factory=list)  # image guidance, on edits
    chosen: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the sweep (``render_defaults_sweep``)."""
        seeds = {part: [sweep_seed(part, 0), sweep_seed(part, self.n - 1)] for part in PARTS}
        if not self.image_points:
            seeds.pop("edit")
        return dict(metric="t2i_attr_acc", image_metric="edit_acc" if self.image_points else None,
                    n=self.n, seeds=seeds, grid=self.grid, scores=self.points,
                    image_scores=self.image_points, chosen=self.chosen,
                    seconds=round(self.seconds, 1), tie_break="fewer steps, then lower guidance")


def choose(points: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The best point by its mean ``metric``; ties: fewer steps, then lower guidance."""
    def key(p: dict[str, Any]):
        value = p[metric] if p[metric] is not None else -1.0
        return (-value, p.get("num_inference_steps", 0), p.get("guidance_scale", 0.0),
                p.get("image_guidance_scale", 0.0))
    return min(points, key=key)


def _score_point(runtime: "Runtime", part: str, n: int, render: dict[str, Any]) -> dict[str, Any]:
    suite, _ = PARTS[part]
    values = []
    for k in range(n):
        ex = sweep_example(part, k)
        answer = ask(runtime, suite, ex, seed=sweep_seed(part, k), render=render)
        values.append(next(iter(score(suite, ex, answer).values())))
    mean, se, _ = mean_and_se(values)
    key = "t2i_attr_acc" if part == "t2i" else "edit_acc"
    return {**render, key: mean, "standard_error": se}


def sweep(model: str | Path | None = None, *, n: int = SWEEP_N, steps: Sequence[int] = STEPS,
          guidances: Sequence[float] = GUIDANCES,
          image_guidances: Sequence[float] = IMAGE_GUIDANCES, runtime: "Runtime | None" = None,
          write: bool = True, log: Any = "stderr") -> SweepResult:
    """Score the grid on ``n`` held-out scenes per point and, with ``write``, put the winner in
    ``model``'s manifest (``render_defaults``, its ``seed`` kept; ``render_defaults_sweep``).
    An empty ``image_guidances`` leaves image guidance as it is."""
    say = (lambda m: print(f"[sweep] {m}", file=sys.stderr if log == "stderr" else log,
                           flush=True)) if log is not None else (lambda m: None)
    if n < 1 or not steps or not guidances:
        raise ValueError("the sweep needs n >= 1 and at least one step count and guidance")
    root = _model_root(model)
    if write and (root is None or read_manifest(root) is None):
        raise FileNotFoundError(f"no {MANIFEST_NAME} to write the sweep's choice into for model "
                                f"{model!r}; pass write=False (--no-write) to only print it")
    runtime = runtime if runtime is not None else _load(model)
    result = SweepResult(model=runtime.name, n=n, grid=dict(
        num_inference_steps=[int(s) for s in steps], guidance_scale=[float(g) for g in guidances],
        image_guidance_scale=[float(g) for g in image_guidances]))
    started = time.monotonic()
    for s in result.grid["num_inference_steps"]:
        for g in result.grid["guidance_scale"]:
            point = _score_point(runtime, "t2i", n, dict(num_inference_steps=s, guidance_scale=g))
            result.points.append(point)
            say(f"steps {s}, guidance {g}: t2i_attr_acc {point['t2i_attr_acc']} ± "
                f"{point['standard_error']} ({time.monotonic() - started:.0f} s)")
    best = choose(result.points, "t2i_attr_acc")
    result.chosen = dict(num_inference_steps=best["num_inference_steps"],
                         guidance_scale=best["guidance_scale"])
    for ig in result.grid["image_guidance_scale"]:
        point = _score_point(runtime, "edit", n, dict(result.chosen, image_guidance_scale=ig))
        result.image_points.append(point)
        say(f"image guidance {ig}: edit_acc {point['edit_acc']} ± {point['standard_error']}")
    if result.image_points:
        result.chosen["image_guidance_scale"] = choose(result.image_points,
                                                       "edit_acc")["image_guidance_scale"]
    result.seconds = time.monotonic() - started
    if write:
        written = write_render_defaults(root, result.chosen, result.record())
        say(f"wrote {root / MANIFEST_NAME}: render_defaults {written}")
    return result


def format_sweep(result: SweepResult) -> str:
    """The grid as a table of mean ± standard error, and the choice."""
    guid = result.grid["guidance_scale"]
    lines = [f"render-defaults sweep: model {result.model!r}, {result.n} held-out scenes per point "
             f"(seeds from {SWEEP_BASE}), \"Draw a {{colour}} {{shape}}.\" scored by t2i_attr_acc",
             "", "  steps \\ guidance " + "".join(f"{g:>18g}" for g in guid)]
    for s in result.grid["num_inference_steps"]:
        row = [p for p in result.points if p["num_inference_steps"] == s]
        cells = "".join(f"{p['t2i_attr_acc']:>9.4f} ± {p['standard_error']:.4f}" for p in row)
        lines.append(f"  {s:>16} {cells}")
    if result.image_points:
        lines += ["", "  image_guidance_scale (edits, edit_acc, at the chosen steps and guidance)"]
        lines += [f"  {p['image_guidance_scale']:>16g} {p['edit_acc']:>9.4f} ± "
                  f"{p['standard_error']:.4f}" for p in result.image_points]
    lines += ["", "  chosen: " + ", ".join(f"{k} {v}" for k, v in result.chosen.items())
              + " (ties: fewer steps, then lower guidance)"]
    return "\n".join(lines)


def run_sweep_cli(model: str | Path | None, *, n: int = SWEEP_N, steps: Sequence[int] = STEPS,
                  guidances: Sequence[float] = GUIDANCES,
                  image_guidances: Sequence[float] = IMAGE_GUIDANCES, write: bool = True,
                  as_json: bool = False, out: Any = None, err: Any = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    result = sweep(model, n=n, steps=steps, guidances=guidances, image_guidances=image_guidances,
                   write=write, log=err)
    if as_json:
        print(json.dumps(result.record()), file=out, flush=True)
    else:
        print(format_sweep(result), file=out, flush=True)
    if not write:
        print("[sweep] --no-write: the manifest is unchanged", file=err, flush=True)
    return 0
