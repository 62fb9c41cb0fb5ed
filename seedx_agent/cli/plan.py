"""``seedx plan``: where every component of a model would live and whether it fits, before
loading anything.

It reads shapes only (file headers of TREE, or with ``--official`` the full-size manifests of the
SEED-X-17B release that ship with the package), so it answers in seconds on a laptop for a
checkpoint that needs an 80 GB card, and never spends the minutes a failed load would.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import EXIT_FAILED, EXIT_OK, CliError


@click.command("plan")
@click.argument("tree", required=False, type=click.Path(path_type=Path), metavar="[TREE]")
@click.option("--official", is_flag=True, help="plan the released SEED-X-17B from the shipped "
              "manifests (no download needed)")
@click.option("--profile", "profile", default=None, metavar="NAME",
              help="a memory profile: 80gb, 48gb, 24gb (default: 24gb unless --placement)")
@click.option("--placement", default=None, metavar="PLAN",
              help="any --placement of the other commands instead of a profile (cpu+int8, cuda:0)")
@click.option("--device", default="cuda:0", show_default=True, help="the GPU a profile uses")
@click.option("--variant", default="seed_x_i", show_default=True, help="which LLM of TREE")
@click.option("--max-memory", default=None, metavar="DEV=SIZE,...",
              help="budgets replacing the profile's, e.g. cuda:0=20GiB,cpu=64GiB")
@click.option("--context", type=click.IntRange(1), default=None,
              help="KV cache length in tokens (default 4096)")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def plan(tree: Path | None, official: bool, profile: str | None, placement: str | None,
         device: str, variant: str, max_memory: str | None, context: int | None, batch: int,
         as_json: bool) -> int:
    """Print the placement of TREE (or, --official, the released SEED-X-17B) and the estimated
    peak memory per device, from shapes alone; exit status 1 when it does not fit."""
    from ..memory_plan import official_shapes, plan_memory, tree_shapes
    from ..placement import Placement, parse_max_memory

    if official == (tree is not None):
        raise CliError("give a model TREE or --official (one of them)")
    if profile is not None and placement is not None:
        raise CliError("give --profile or --placement, not both")
    try:
        budgets = parse_max_memory(max_memory)
        plan_ = (Placement.parse(placement) if placement is not None
                 else Placement.profile(profile or "24gb", device=device))
        plan_ = plan_.with_max_memory(budgets)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        shapes = official_shapes() if official else tree_shapes(tree, variant)
        estimate = plan_memory(shapes, plan_, context=context, batch=batch)
    except (FileNotFoundError, NotImplementedError, ValueError) as exc:
        raise CliError(str(exc)) from None

    if as_json:
        click.echo(json.dumps(estimate.to_dict(), indent=2))
    else:
        click.echo(estimate.format())
    if not estimate.fits:
        over = ", ".join(f"{d}: needs {p / 2**30:.2f} GiB, budget {b / 2**30:.2f} GiB"
                         for d, (p, b) in estimate.over_budget().items())
        click.echo(f"seedx: the plan does not fit ({over}); try a smaller profile, a shorter "
                   "--context, or --max-memory with more room", err=True)
        return EXIT_FAILED
    return EXIT_OK
