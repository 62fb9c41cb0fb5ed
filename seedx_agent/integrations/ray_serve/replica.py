"""One runtime replica: the unchanged OpenAI-style app (``create_app``) over one loaded runtime.

Each replica loads the whole model once, every variant resident (the Nano's adapters sit on one
base), so whichever replica holds a session can run any variant the request names. The
placement comes from the normal plan: on a GPU replica Ray makes its one GPU the only visible
one, so ``auto`` means that GPU; without GPUs it is ``cpu``. Requests arrive from the session
router already addressed to this replica and go through the app in-process (`call_asgi`), so
limits, auth, validation and errors are exactly those of ``seedx serve``.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator

from ray import serve

from .args import ScaleOutArgs

ACCEPTED = "accepted"
"""The first item of every forwarded request: the router's proof that a live replica took it."""


@serve.deployment(max_ongoing_requests=1000, graceful_shutdown_timeout_s=60,
                  health_check_period_s=2, health_check_timeout_s=30)
class RuntimeReplica:
    # the app queues turns itself (thread pool, per-device FIFO locks): Serve must not cap them

    def __init__(self, args: ScaleOutArgs, name: str, placement: str):
        import seedx_agent

        from ...placement import Placement
        from ...store import SessionStore
        from ..openai_server import ServerSettings, create_app

        if args.torch_threads is not None:
            import torch

            torch.set_num_threads(args.torch_threads)
        self.name = name
        runtime = seedx_agent.from_pretrained(args.model or _default_model(),
                                              placement=Placement.parse(placement))
        settings = ServerSettings(token=args.resolved_token(),
                                  allow_remote_images=args.allow_remote_images,
                                  limits=args.limits())
        self.app = create_app(runtime, SessionStore(args.store), settings)

    async def forward(self, method: str, path: str, query: bytes,
                      headers: list[tuple[bytes, bytes]], body: bytes
                      ) -> AsyncIterator[Any]:
        from .asgi_call import call_asgi

        yield ACCEPTED
        async for item in call_asgi(self.app, method, path, query, headers, body):
            yield item

    def pid(self) -> int:
        """The replica's process, for operators and the failure tests (kill -9 it)."""
        return os.getpid()


def _default_model() -> str:
    from ...presets import default_preset

    return default_preset()
