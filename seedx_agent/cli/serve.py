"""``seedx serve``: SEED-X behind OpenAI's HTTP API (`seedx_agent.integrations.openai_server`).

The bind is checked before the model loads: a server beyond loopback without a token is
refused at once, not after a minute of loading. FastAPI and uvicorn are imported inside the
command, so ``seedx --help`` stays cheap; so is Ray, and only with ``--replicas`` or
``--serve-config`` (the scale-out server, `seedx_agent.integrations.ray_serve`,
docs/scale_out.md).
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
@click.option("--replicas", default=None, type=click.IntRange(min=1), metavar="N",
              help="scale out on a local Ray Serve: N runtime replicas (one GPU each where "
                   "there are GPUs) behind a session router; docs/scale_out.md")
@click.option("--serve-config", default=None, metavar="FILE",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="run a Ray Serve config file (YAML: applications with import_path and args) "
                   "on a local Ray; docs/scale_out.md")
def serve(model: str | None, placement: str | None, store: Path | None, host: str, port: int,
          token: str | None, allow_remote_images: bool, max_body_bytes: int,
          max_image_pixels: int, max_new_tokens: int, request_timeout: float,
          replicas: int | None, serve_config: Path | None) -> None:
    """Serve an OpenAI-style HTTP API (chat, images, models, sessions); docs/server.md."""
    if replicas is not None or serve_config is not None:
        return _scale_out(replicas, serve_config, model=model, placement=placement, store=store,
                          host=host, port=port, token=token,
                          allow_remote_images=allow_remote_images,
                          max_body_bytes=max_body_bytes, max_image_pixels=max_image_pixels,
                          max_new_tokens=max_new_tokens, request_timeout=request_timeout)
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


def _scale_out(replicas: int | None, serve_config: Path | None, *, store: Path | None, host: str,
               port: int, token: str | None, **options) -> None:
    """The Ray Serve application, on a local Ray, until SIGINT or SIGTERM."""
    if replicas is not None and serve_config is not None:
        raise CliError("give --replicas N or --serve-config FILE, not both (a config file names "
                       "the replicas in its application's args)")
    try:
        from ..integrations.ray_serve import ScaleOutArgs
        from ..integrations.ray_serve import launch
    except ImportError as exc:
        raise CliError(f"seedx serve --replicas needs the [ray] extra: pip install "
                       f"'seedx-agent[ray]' ({exc})") from None
    if serve_config is not None:
        begin = lambda: launch.start_from_config(serve_config)  # noqa: E731
        where = f"the applications of {serve_config}"
    else:
        token = token or os.environ.get(TOKEN_ENV) or None
        try:
            launch.check_bind(host, token)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        args = ScaleOutArgs(store=str(open_store(store, create=True).root), replicas=replicas,
                            token=token, **options)
        begin = lambda: launch.start(args, host=host, port=port)  # noqa: E731
        where = f"{replicas} replica(s) on http://{host}:{port}/v1, sessions in {args.store}"

    def started() -> None:
        try:
            url = begin()
        except ValueError as exc:
            raise CliError(str(exc)) from None
        click.echo(f"seedx serve: {where} (Ray Serve at {url}; Ctrl-C stops)", err=True)

    launch.serve_until_signalled(started)
