"""Bearer tokens: who may use a server that others can reach.

On loopback only local processes can connect, so a token is optional there; anywhere else the
server holds sessions and pictures of its users and runs a model on their behalf, so it refuses
to start without one (`check_bind`) and every request must carry it.
"""

from __future__ import annotations

import hmac
import ipaddress

from .limits import ApiError

TOKEN_ENV = "SEEDX_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a server beyond loopback that anyone could use."""
    if not token and not is_loopback(host):
        raise ValueError(f"listening on {host} lets other machines connect: set a token "
                         f"(--token or {TOKEN_ENV}), or bind to 127.0.0.1")


def check_request(token: str | None, authorization: str | None) -> None:
    """Raise 401 unless ``authorization`` is ``Bearer <token>`` (no token set: anyone)."""
    if not token:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                       "invalid_api_key", "authentication_error")
