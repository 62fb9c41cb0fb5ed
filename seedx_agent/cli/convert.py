"""``seedx convert SRC DST``: a released pickled checkpoint rewritten once as safetensors.

The work is `core_models.checkpoint.convert_to_safetensors` (streamed shard by shard, pickles
read with ``weights_only=True``, crash-safe); this is its command line. An interrupted run (Ctrl-C:
exit status 130) or one the disk refuses (exit status 2) leaves nothing in DST that a loader
would take for a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import click

from .errors import EXIT_OK, CliError


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
