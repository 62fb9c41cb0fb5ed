"""Running the application on a local Ray: what ``seedx serve --replicas`` and the tests use.

The Ray node is this machine's own (``address="local"``: never one that ``$RAY_ADDRESS``
happens to name), on loopback, without the dashboard. A config file is deployed the way Ray's
own ``serve run config.yaml`` does it (the controller builds each application from its
``import_path`` and ``args``, so every field of the file applies), except that an HTTP host the
file does not set means 127.0.0.1, not Ray's 0.0.0.0.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import serve

from ..openai_server.auth import TOKEN_ENV, check_bind
from .app import APP_NAME, build_app
from .args import ScaleOutArgs

LOOPBACK = "127.0.0.1"


def start_ray(*, num_cpus: float | None = None, temp_dir: str | None = None) -> None:
    ray.init(address="local", include_dashboard=False, _node_ip_address=LOOPBACK,
             num_cpus=None if num_cpus is None else int(num_cpus + 0.999),
             _temp_dir=temp_dir, namespace="seedx", logging_level="warning")


def start(args: ScaleOutArgs, *, host: str = LOOPBACK, port: int = 8000,
          temp_dir: str | None = None) -> str:
    """Ray, Serve and the application, running when this returns; the base URL."""
    check_bind(host, args.resolved_token())
    # logical CPUs: enough for every replica even where the machine has fewer cores
    start_ray(num_cpus=max(os.cpu_count() or 1, args.replicas * args.replica_cpus),
              temp_dir=temp_dir)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(args), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def start_from_config(path: Path, *, temp_dir: str | None = None,
                      timeout_s: float = 600.0) -> str:
    """Ray, Serve and the applications of the config file at ``path``, running; the base URL."""
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    try:
        config = ServeDeploySchema.model_validate(yaml.safe_load(Path(path).read_text()) or {})
    except Exception as exc:
        raise ValueError(f"{path} is not a Ray Serve config file: {exc}") from None
    if "host" not in config.http_options.model_fields_set:
        config.http_options.host = LOOPBACK
    for application in config.applications:
        check_bind(config.http_options.host,
                   (application.args or {}).get("token") or os.environ.get(TOKEN_ENV))
    start_ray(temp_dir=temp_dir)
    client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                   proxy_location=config.proxy_location)
    client.deploy_apps(config, _blocking=False)
    names = [a.name for a in config.applications]
    deadline = time.monotonic() + timeout_s
    while True:
        states = {n: serve.status().applications.get(n) for n in names}
        failed = {n: s.message for n, s in states.items() if s and s.status == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError(f"the config's applications failed to deploy: {failed}")
        if all(s and s.status == "RUNNING" for s in states.values()):
            return f"http://{config.http_options.host}:{config.http_options.port}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"the applications were not running after {timeout_s:g} s: "
                               f"{ {n: s and s.status for n, s in states.items()} }")
        time.sleep(0.5)


def stop() -> None:
    """Serve (running requests get the replicas' graceful shutdown time) and Ray."""
    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()


def serve_until_signalled(begin: Any) -> None:
    """``begin()`` (one of the starts above, bound), then wait for SIGINT or SIGTERM, then
    `stop`; a failed start stops too."""
    stopping = threading.Event()

    def catch() -> dict:
        return {s: signal.signal(s, lambda *_: stopping.set())
                for s in (signal.SIGINT, signal.SIGTERM)}

    previous = catch()
    try:
        begin()
        catch()  # again: ray.init's failure handler (C++) took SIGTERM over and would abort
        while not stopping.wait(0.5):
            pass
    finally:
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
