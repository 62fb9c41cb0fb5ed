"""The ingress deployment: the one HTTP entry, handing every request to `Forwarder`.

Its FastAPI app has one catch-all route; the OpenAPI page (``/docs``) is the replicas' own, so
clients see the same API as ``seedx serve``. There is one ingress replica: the session table
lives in its memory, and a second ingress would keep a second, disagreeing table.
"""

# no `from __future__ import annotations`: FastAPI must see the real `Request` class on the
# method Serve rewrites, or it takes `request` for a query parameter
from typing import Any

from fastapi import FastAPI, Request
from ray import serve

from .args import ScaleOutArgs

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

router_app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@serve.deployment(num_replicas=1, max_ongoing_requests=10_000, ray_actor_options={"num_cpus": 0})
@serve.ingress(router_app)
class SessionIngress:
    def __init__(self, replicas: list, names: list[str], args: ScaleOutArgs):
        # imported here: Serve ships this class by value, and only what __init__ imports is sure
        # to be found again on the replica
        from .forwarding import Forwarder

        self.forwarder = Forwarder(replicas, names, args)

    @router_app.api_route("/{path:path}", methods=_METHODS, include_in_schema=False)
    async def forward(self, request: Request) -> Any:
        return await self.forwarder.forward(request)
