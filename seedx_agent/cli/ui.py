"""``seedx ui``: the web UI (`seedx_agent.integrations.gradio_ui`) on one model and one store.

It listens on 127.0.0.1 unless told otherwise: the page has no login, so reaching it from
another machine is something the operator chooses with ``--host``. Gradio is imported inside
the command, so ``seedx --help`` stays cheap and works without the ``[ui]`` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import CliError
from .model import load_runtime, model_options, print_banner
from .sessions import open_store, store_option


@click.command("ui")
@model_options
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; the page has no login, keep it on loopback unless "
                   "you mean to share it")
@click.option("--port", type=click.IntRange(1, 65535), default=7860, show_default=True)
@click.option("--num-inference-steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="where the denoising-steps slider starts (default: the model's)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="bound every reply (default: the session's)")
def ui(model: str | None, placement: str | None, store: Path | None, host: str,
       port: int, num_inference_steps: int | None, max_new_tokens: int | None) -> None:
    """Open the web UI: chat with pictures, skills, sessions and downloads in the browser."""
    try:
        from ..integrations.gradio_ui import build_ui, launch_ui
    except ImportError as exc:
        raise CliError(f"seedx ui needs the [ui] extra: pip install 'seedx-agent[ui]' ({exc})") \
            from None
    opened = open_store(store, create=True)
    runtime = load_runtime(model, placement)
    print_banner(runtime, sys.stderr)
    print(f"seedx ui: http://{host}:{port}/ (sessions in {opened.root}; Ctrl-C stops)",
          file=sys.stderr, flush=True)
    page = build_ui(runtime, opened, num_inference_steps=num_inference_steps,
                    max_new_tokens=max_new_tokens)
    launch_ui(page, opened, host=host, port=port)  # until Ctrl-C, or until the page is closed
