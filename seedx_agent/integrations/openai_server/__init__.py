"""``seedx serve``: SEED-X behind OpenAI's HTTP API, for apps that already speak it.

``create_app(runtime, store, settings)`` builds the FastAPI app (app.py); the wire shapes and
their SEED-X extensions are in schemas.py, live sessions in sessions.py, the per-request limits
in limits.py, bearer tokens in auth.py. docs/server.md is the user's guide.

Importing this package imports FastAPI; ``import seedx_agent`` and ``seedx --help`` never do.
"""

from .app import ServerSettings, create_app
from .auth import TOKEN_ENV, check_bind
from .limits import ApiError, Limits

__all__ = ["create_app", "ServerSettings", "Limits", "ApiError", "check_bind", "TOKEN_ENV"]
