"""``seedx convert SRC DST``: a released pickled checkpoint rewritten once as safetensors; and
``seedx convert extract-adapters TREE``: the release's variant LLMs rewritten as peft adapters on
one base (`core_models.checkpoint.extract_adapters`).

The work is `core_models.checkpoint.convert_to_safetensors` (streamed shard by shard, pickles
read with ``weights_only=True``, crash-safe); this is its command line. An interrupted run (Ctrl-C:
exit status 130) or one the disk refuses (exit status 2) leaves nothing in DST that a loader
would take for a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import EXIT_FAILED, EXIT_OK, CliError


class ConvertGroup(click.Group):
    """``convert SRC DST`` as it always was, plus subcommands (``convert extract-adapters``):
    a first argument naming a subcommand runs it, anything else is the plain conversion."""

    def __init__(self, plain: click.Command):
        super().__init__(name=plain.name, help=plain.help, invoke_without_command=True,
                         no_args_is_help=False)
        self.plain = plain

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["convert.plain"] = not (args and args[0] in self.commands)
        if ctx.meta["convert.plain"]:  # a command's parsing rules, not a group's
            ctx.allow_interspersed_args, ctx.allow_extra_args = True, False
            return self.plain.parse_args(ctx, args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        if ctx.meta.get("convert.plain"):
            return ctx.invoke(self.plain.callback, **ctx.params)
        return super().invoke(ctx)

    def format_options(self, ctx: click.Context, formatter) -> None:
        self.plain.format_options(ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_usage(self, ctx: click.Context, formatter) -> None:
        formatter.write_usage(ctx.command_path, "SRC DST [OPTIONS]  |  extract-adapters TREE "
                                                "[OPTIONS]")


@click.command("convert")
@click.argument("src", type=click.Path(path_type=Path), metavar="SRC")
@click.argument("dst", type=click.Path(path_type=Path), metavar="DST")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="cast while converting (the released LLM is fp32)")
@click.option("--max-shard-size", default="5GB", metavar="SIZE", show_default=True)
@click.option("--qwen-visual", is_flag=True,
              help="extract the ViT from Qwen-VL-Chat shards (transformer.visual.*, prefix "
                   "stripped)")
def convert(src: Path, dst: Path, dtype: str | None, max_shard_size: str,
            qwen_visual: bool) -> int:
    """Convert a pickled checkpoint (.bin/.pt, sharded or not: LLM shards + index, agent,
    de-tokenizer, Qwen ViT) to safetensors, once: streamed shard by shard and crash-safe."""
    import torch

    from core_models import checkpoint as ckpt

    key_map = ckpt.qwen_visual_key_map if qwen_visual else ckpt.identity_key_map
    try:
        out = ckpt.convert_to_safetensors(src, dst, dtype=getattr(torch, dtype) if dtype else None,
                                          max_shard_size=max_shard_size, key_map=key_map)
    except (ckpt.CheckpointError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # a full disk or a refused folder: the writer removed its shards
        raise CliError(f"cannot write {dst}: {exc.strerror or exc}; no checkpoint was left "
                       "there (free space or choose another destination, then run it "
                       "again)") from None
    click.echo(f"converted {src} -> {out}")
    return EXIT_OK


_plain_convert = convert
convert = ConvertGroup(_plain_convert)


@convert.command("extract-adapters")
@click.argument("tree", type=click.Path(path_type=Path), metavar="TREE")
@click.option("--base", default="seed_x", show_default=True, help="the variant the others were "
              "tuned from; its LLM stays dense")
@click.option("--variants", default="seed_x_i,seed_x_edit", show_default=True,
              help="comma-separated variants to rewrite as adapters on the base")
@click.option("--max-rank", type=click.IntRange(1), default=64, show_default=True,
              help="highest LoRA rank per tensor; above it the tensor stays dense")
@click.option("--tol", type=click.FloatRange(0, 1, min_open=True), default=1e-2,
              show_default=True, help="relative Frobenius residual allowed per tensor difference")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="dtype of the stored factors (default: the variant's own)")
@click.option("--dry-run", is_flag=True, help="decide and report, write nothing (no logits "
              "check)")
def extract_adapters(tree: Path, base: str, variants: str, max_rank: int, tol: float,
                     dtype: str | None, dry_run: bool) -> int:
    """Rewrite variant LLMs of the release tree TREE as peft adapters on the base LLM (in
    TREE/adapters/<variant>/), checked by a layer-streamed logits comparison; afterwards the
    runtime keeps every variant resident on one base."""
    import torch

    from core_models import checkpoint as ckpt

    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    if not names:
        raise CliError("--variants names no variant")
    if not tree.is_dir():
        raise CliError(f"no release tree at {tree}")
    try:
        reports = ckpt.extract_adapters(tree, base=base, variants=names, tol=tol,
                                        max_rank=max_rank, dry_run=dry_run,
                                        dtype=getattr(torch, dtype) if dtype else None)
    except ckpt.ExtractionCheckFailed as exc:
        click.echo(f"seedx: {exc}", err=True)
        return EXIT_FAILED
    except (ckpt.CheckpointError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:  # a full disk: the folder being written was removed
        raise CliError(f"cannot write {tree / 'adapters'}: {exc.strerror or exc}; no adapter "
                       "was left half-written (free space, then run it again)") from None
    click.echo(summary_table(reports, dry_run=dry_run))
    return EXIT_OK


def summary_table(reports, *, dry_run: bool = False) -> str:
    """One row per variant: LoRA tensors and their ranks, dense fallbacks, worst residual,
    adapter vs dense size, the logits check."""
    from collections import Counter

    header = ("variant", "lora (rank: count)", "tokens", "dense", "max residual", "adapter MB",
              "variant MB", "logits check")
    rows = [header]
    for r in reports:
        ranks = ", ".join(f"{rank}:{n}" for rank, n in sorted(Counter(r.ranks.values()).items()))
        check = "skipped (dry run)" if dry_run else (
            "not run" if r.logits is None else
            f"{'ok' if r.logits['ok'] else 'FAILED'} max rel {r.logits['max_rel']:.1e}, "
            f"top-1 {r.logits['top1_agreement']:.0%}")
        rows.append((r.variant, f"{len(r.ranks)} ({ranks})" if ranks else "0",
                     str(len(r.of_kind("tokens"))), str(len(r.dense_modules)),
                     f"{r.max_residual:.2e}", f"{r.adapter_bytes / 1e6:.1f}",
                     f"{r.variant_bytes / 1e6:.1f}", check))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for r in reports:
        if r.dense_modules:
            lines.append(f"{r.variant}: kept whole: {', '.join(r.dense_modules)}")
        if r.folder:
            lines.append(f"{r.variant}: wrote {r.folder}")
    return "\n".join(lines)
