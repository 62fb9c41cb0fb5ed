"""The Ray Serve application: N runtime replicas behind one session router.

Each replica is its own single-replica deployment (``seedx-replica-K``), so the router can
address it by name and Serve's own load balancing never picks for a session. ``app_builder`` is
the import path a Ray Serve config file names
(``seedx_agent.integrations.ray_serve:app_builder``, its ``args`` being `ScaleOutArgs`).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.serve import Application

from .args import ScaleOutArgs
from .ingress import SessionIngress
from .replica import RuntimeReplica

APP_NAME = "seedx"


def replica_name(k: int) -> str:
    return f"seedx-replica-{k}"


def build_app(args: ScaleOutArgs) -> Application:
    """One replica per GPU when the cluster has GPUs (``num_gpus=1`` each, placement ``auto``:
    the GPU Ray hands it), CPU replicas otherwise; the placement a user names wins."""
    gpus = args.gpus if args.gpus is not None else ray.cluster_resources().get("GPU", 0) >= 1
    options: dict[str, Any] = {"num_gpus": 1} if gpus else {"num_cpus": args.replica_cpus}
    placement = args.placement or ("auto" if gpus else "cpu")
    names = [replica_name(k) for k in range(args.replicas)]
    replicas = [RuntimeReplica.options(name=name, ray_actor_options=options)
                .bind(args, name, placement) for name in names]
    return SessionIngress.bind(replicas, names, args)


def app_builder(args: dict[str, Any]) -> Application:
    """What ``import_path`` in a Ray Serve config points at; ``args`` are `ScaleOutArgs`."""
    return build_app(ScaleOutArgs.model_validate(args))
