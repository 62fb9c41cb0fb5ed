"""``seedx serve --replicas N``: the OpenAI-style server scaled out over Ray Serve.

N runtime replicas (replica.py: ``create_app`` unchanged, one runtime each, one GPU each where
there are GPUs) behind an ingress (ingress.py) that forwards every request to the replica
holding its session, by a session -> replica table (router.py). app.py builds the application
(also what a Ray Serve config file's ``import_path`` names), launch.py runs it on a local Ray.
docs/scale_out.md is the user's guide.

Importing this package imports Ray; ``seedx --help`` and ``seedx serve`` without ``--replicas``
never do.
"""

from .app import APP_NAME, app_builder, build_app, replica_name
from .args import ScaleOutArgs
from .forwarding import REPLICA_HEADER

__all__ = ["build_app", "app_builder", "ScaleOutArgs", "APP_NAME", "REPLICA_HEADER",
           "replica_name"]
