"""What the scale-out application is built from: the arguments a Ray Serve config file names.

One pydantic model, so that ``seedx serve --replicas N`` and a config file (``args:`` under the
application) are validated the same way, and a typo in a config is a clear error at deploy
time instead of a replica that crashes while loading.
"""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from ..openai_server.limits import Limits


class ScaleOutArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = Field(description="the session store's folder; every replica opens it (one node)")
    replicas: int = Field(default=2, ge=1, description="runtime replicas (one per GPU on GPUs)")
    model: str | None = Field(default=None, description="a preset or model folder "
                              "(default: the default preset)")
    placement: str | None = Field(default=None, description="each replica's placement plan; "
                                  "default: auto with GPUs (the one Ray gives it), cpu without")
    token: str | None = Field(default=None, description="bearer token (default: "
                              "$SEEDX_SERVE_TOKEN where the application is built)")
    allow_remote_images: bool = False
    max_body_bytes: int = Field(default=Limits.max_body_bytes, ge=1)
    max_image_pixels: int = Field(default=Limits.max_image_pixels, ge=1)
    max_new_tokens: int = Field(default=Limits.max_new_tokens, ge=1)
    request_timeout: float = Field(default=Limits.request_timeout_s, gt=0)
    gpus: bool | None = Field(default=None, description="one GPU per replica; default: when "
                              "the Ray cluster has GPUs")
    replica_cpus: float = Field(default=1.0, ge=0, description="CPUs Ray reserves per replica "
                                "without GPUs")
    torch_threads: int | None = Field(default=None, ge=1, description="torch threads in each "
                                      "replica (default: torch's own choice)")
    accept_timeout_s: float = Field(default=10.0, gt=0, description="how long the router waits "
                                    "for a replica to take a request before it counts as down")
    down_for_s: float = Field(default=30.0, ge=0, description="how long a replica that failed "
                              "is given no new sessions (sessions it lost stay where they moved)")

    def limits(self) -> Limits:
        return Limits(max_body_bytes=self.max_body_bytes, max_image_pixels=self.max_image_pixels,
                      max_new_tokens=self.max_new_tokens, request_timeout_s=self.request_timeout)

    def resolved_token(self) -> str | None:
        from ..openai_server.auth import TOKEN_ENV

        return self.token or os.environ.get(TOKEN_ENV) or None
