"""``seedx eval nano``: the Nano's evaluation as a command of the core's ``eval`` group.

The plugin adds it through ``register_commands(cli)`` (see ``seedx_nano.__init__``), as any model
plugin adds its evaluations. Scores go to stdout (``--json``: one JSON object whose first keys
are the metrics, then their standard errors, counts, thresholds and whether each is met),
progress and notes to stderr; the exit status is 1 when the model-free analyser failed its own
check on the ground truth (the scores are then not trustworthy), else 0. ``--sweep`` chooses
the render defaults instead (`seedx_nano.sweep`) and writes them into the model's manifest.
"""

from __future__ import annotations

import click

from .evaluate import DEFAULT_N
from .sweep import GUIDANCES, IMAGE_GUIDANCES, STEPS, SWEEP_N


def _listed(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def _numbers(text: str, kind: type, name: str) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}",
                                 param_hint=name) from None
    if any(v < 0 for v in values) or (kind is int and any(v < 1 for v in values)):
        raise click.BadParameter("out of range", param_hint=name)
    return values


@click.command("nano", help="Score SEED-X Nano on held-out scenes of its world through the agent "
                            "(a session per scene, its own seed, canonical requests), with a "
                            "model-free analyser: grounding mIoU, caption attributes, counting, "
                            "text-to-image attributes, edits (accuracy, PSNR outside the edited "
                            "object), try-on, slides (layout mIoU, text), posters, improvements "
                            "and stories, each with its standard error and threshold. --json "
                            "prints one JSON object; progress and notes go to stderr. --sweep "
                            "chooses the steps and guidance on other held-out scenes and writes "
                            "them into the model's nano_manifest.json.")
@click.option("--model", default=None, metavar="nano|PATH",
              help="the Nano preset (default) or an exported Nano folder")
@click.option("--n", "n", type=int, default=None, metavar="N",
              help=f"held-out scenes per metric (default {DEFAULT_N}; with --sweep, per grid "
                   f"point, default {SWEEP_N})")
@click.option("--smoke", is_flag=True, help="a handful of scenes per metric (what CI runs)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object (metrics first)")
@click.option("--threads", type=int, default=1, show_default=True, metavar="N",
              help="torch threads (the Nano's matrices are small: one thread is fastest and "
                   "leaves the other cores free)")
@click.option("--sweep", "do_sweep", is_flag=True,
              help="choose num_inference_steps x guidance_scale (then image_guidance_scale) on "
                   "held-out scenes and write the winner into the model's manifest")
@click.option("--steps", default=_listed(STEPS), show_default=True, metavar="N,N,...",
              help="--sweep: the step counts")
@click.option("--guidances", default=_listed(GUIDANCES), show_default=True, metavar="G,G,...",
              help="--sweep: the guidance scales")
@click.option("--image-guidances", default=_listed(IMAGE_GUIDANCES), show_default=True,
              metavar="G,G,...", help="--sweep: the image guidance scales tried on edits at the "
                                      "chosen pair (empty: keep the current one)")
@click.option("--no-write", is_flag=True, help="--sweep: print the table, leave the manifest")
@click.pass_context
def nano_eval(ctx: click.Context, model: str | None, n: int | None, smoke: bool, as_json: bool,
              threads: int, do_sweep: bool, steps: str, guidances: str, image_guidances: str,
              no_write: bool) -> None:
    if n is not None and n < 1:
        raise click.BadParameter("must be at least 1", param_hint="--n")
    grid = (_numbers(steps, int, "--steps"), _numbers(guidances, float, "--guidances"),
            _numbers(image_guidances, float, "--image-guidances"))
    if do_sweep and not (grid[0] and grid[1]):
        raise click.BadParameter("the sweep needs at least one value", param_hint="--steps/--guidances")
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        if do_sweep:
            from .sweep import run_sweep_cli

            status = run_sweep_cli(model, n=n or SWEEP_N, steps=grid[0], guidances=grid[1],
                                   image_guidances=grid[2], write=not no_write, as_json=as_json)
        else:
            from .evaluate import run_cli

            status = run_cli(model, n=n or DEFAULT_N, smoke=smoke, as_json=as_json)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if status:
        ctx.exit(status)
