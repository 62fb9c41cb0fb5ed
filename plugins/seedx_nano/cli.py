"""``seedx eval nano``: the Nano's evaluation as a command of the core's ``eval`` group.

The plugin adds it through ``register_commands(cli)`` (see ``seedx_nano.__init__``), as any model
plugin adds its evaluations. Scores go to stdout (``--json``: one JSON object with the seven
metrics), progress and notes to stderr; the exit status is 1 when the model-free analyser failed
its own check on the ground truth (the scores are then not trustworthy), else 0.
"""

from __future__ import annotations

import click

from .evaluate import DEFAULT_N


@click.command("nano", help="Score SEED-X Nano on held-out scenes of its world through the agent "
                            "(a session per scene, canonical requests), with a model-free "
                            "analyser: grounding mIoU, caption attributes, counting, "
                            "text-to-image attributes, edits (accuracy, PSNR outside the edited "
                            "object) and try-on. --json prints one JSON object; progress and "
                            "notes go to stderr.")
@click.option("--model", default=None, metavar="nano|PATH",
              help="the Nano preset (default) or an exported Nano folder")
@click.option("--n", "n", type=int, default=DEFAULT_N, show_default=True, metavar="N",
              help="held-out scenes per metric")
@click.option("--smoke", is_flag=True, help="a handful of scenes per metric (what CI runs)")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object with the seven metrics")
@click.option("--threads", type=int, default=1, show_default=True, metavar="N",
              help="torch threads (the Nano's matrices are small: one thread is fastest and "
                   "leaves the other cores free)")
@click.pass_context
def nano_eval(ctx: click.Context, model: str | None, n: int, smoke: bool, as_json: bool,
              threads: int) -> None:
    if n < 1:
        raise click.BadParameter("must be at least 1", param_hint="--n")
    import torch

    from .evaluate import run_cli

    if threads > 0:
        torch.set_num_threads(threads)
    try:
        status = run_cli(model, n=n, smoke=smoke, as_json=as_json)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    if status:
        ctx.exit(status)
