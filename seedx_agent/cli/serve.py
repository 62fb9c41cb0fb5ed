"""``seedx serve``: SEED-X behind OpenAI's HTTP API (`seedx_agent.integrations.openai_server`).

The bind is checked before the model loads: a server beyond loopback without a token is
refused at once, not after a minute of loading. FastAPI and uvicorn are imported inside the
command, so ``seedx --help`` stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .errors import CliError
from .model import load_runtime, model_options, print_banner
from .sessions import open_store, store_option

TOKEN_ENV = "SEEDX_SERVE_TOKEN"  # the same name as openai_server.auth.TOKEN_ENV, without its import


@click.command("serve")
@model_options
@store_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; beyond loopback a token is required")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--token", default=None, metavar="TOKEN",
              help=f"bearer token clients must send (default: ${TOKEN_ENV})")
@click.option("--allow-remote-images", is_flag=True,
              help="let requests name http(s) image URLs, which the server then fetches")
@click.option("--max-body-bytes", default=32 * 1024 * 1024, show_default=True, type=int)
@click.option("--max-image-pixels", default=4096 * 4096, show_default=True, type=int)
@click.option("--max-new-tokens", default=512, show_default=True, type=int,
              help="the most tokens one reply may have")
@click.option("--request-timeout", default=300.0, show_default=True, type=float,
              help="seconds one request may take before it is cancelled")
def serve(model: str | None, placement: str | None, store: Path | None, host: str, port: int,
          token: str | None, allow_remote_images: bool, max_body_bytes: int,
          max_image_pixels: int, max_new_tokens: int, request_timeout: float) -> None:
    """Serve an OpenAI-style HTTP API (chat, images, models, sessions); docs/server.md."""
    try:
        import uvicorn

        from ..integrations.openai_server import Limits, ServerSettings, check_bind, create_app
    except ImportError as exc:
        raise CliError(f"seedx serve needs the [serve] extra: pip install 'seedx-agent[serve]' "
                       f"({exc})") from None
    token = token or os.environ.get(TOKEN_ENV) or None
    try:
        check_bind(host, token)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    limits = Limits(max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels,
                    max_new_tokens=max_new_tokens, request_timeout_s=request_timeout)
    settings = ServerSettings(host=host, token=token, allow_remote_images=allow_remote_images,
                              limits=limits)
    opened = open_store(store, create=True)
    runtime = load_runtime(model, placement)
    print_banner(runtime, click.get_text_stream("stderr"))
    app = create_app(runtime, opened, settings)
    click.echo(f"seedx serve: {runtime.name} on http://{host}:{port}/v1 (API docs: /docs), "
               f"sessions in {opened.root}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
