"""Forwarding: every HTTP request, sent whole to the replica that holds its session.

It parses nothing but what routing needs (a ``session_id`` in a chat body, the id in a
``/v1/sessions/{id}`` path) and forwards method, path, query, headers and body to one replica's
app (replica.py), streaming the response back as it comes, with ``x-seedx-replica`` naming the
replica that served it. The table of who holds which session is router.py's.

Failure: a replica that does not take a request within ``accept_timeout_s``, or whose actor is
dead or unavailable, is marked down and the request is sent once more, to the replica the
router now picks (the session resumes there from the shared store, one re-prefill). Nothing of
the request had run, so the retry is safe. A replica that dies *after* it took the request
cannot be retried: whether the turn was committed is unknown (the store knows). Then a plain
request gets 503 ``replica_lost``; a stream whose headers were already sent ends with an SSE
``data: {"error": {..., "code": "replica_lost"}}`` event and no ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

from ..openai_server.app import SESSION_HEADER
from ..openai_server.limits import ApiError, Limits
from ..openai_server.schemas import error_body
from .args import ScaleOutArgs
from .replica import ACCEPTED
from .router import SessionRouter

REPLICA_HEADER = "x-seedx-replica"
LOST = (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)
"""What a call to a replica raises when it is gone (ActorDiedError, ActorUnavailableError, …)."""

log = logging.getLogger(__name__)
_SESSION_PATH = re.compile(r"^/v1/sessions/([^/]+)")


class Forwarder:
    """One ingress's forwarding: the replicas' stream handles, their names and the table."""

    def __init__(self, replicas: list, names: list[str], args: ScaleOutArgs):
        self.handles = [h.options(stream=True) for h in replicas]
        self.names = names
        self.router = SessionRouter(len(replicas), down_for_s=args.down_for_s)
        self.limits: Limits = args.limits()
        self.accept_timeout_s = args.accept_timeout_s

    async def forward(self, request: Request) -> Any:
        """The response to ``request``, from the replica that holds its session."""
        try:
            body = await _read_body(request, self.limits)
        except ApiError as exc:
            return _error(exc)
        session_id = _session_of(request.method, request.scope["path"], body)
        call = (request.method, request.scope["path"], request.scope.get("query_string", b""),
                [(bytes(k), bytes(v)) for k, v in request.headers.raw], body)
        replica, stream = await self._send(session_id, call)
        if stream is None:
            return _error(ApiError(503, "no replica took the request (all down or restarting); "
                                        "nothing of it ran: send it again",
                                   "replica_unavailable", "server_error"))
        try:
            start = await stream.__anext__()
        except LOST as exc:
            log.warning("replica %s died while running a request: marked down (%s)",
                        self.names[replica], type(exc).__name__)
            self._lost(replica)
            return _error(ApiError(
                503, f"replica {self.names[replica]} died while running this request; whether "
                     "its turn was stored is unknown: GET /v1/sessions/{id} shows what the "
                     "session holds (its next request runs on another replica)",
                "replica_lost", "server_error"))
        headers = {k: v for k, v in start["headers"] if k.lower() != "content-length"}
        learnt = headers.get(SESSION_HEADER)
        if learnt:
            self.router.learn(learnt, replica)
        if request.method == "DELETE" and session_id and start["status"] == 200:
            self.router.forget(session_id)
        headers[REPLICA_HEADER] = self.names[replica]
        sse = headers.get("content-type", "").startswith("text/event-stream")
        return StreamingResponse(self._body(stream, replica, sse), status_code=start["status"],
                                 headers=headers)

    async def _send(self, session_id: str | None, call: tuple) -> tuple[int, Any]:
        """The replica that took the request and its response stream (None: none took it),
        after at most one retry on another replica."""
        tried: list[int] = []
        for _attempt in range(2):
            replica = (self.router.for_session(session_id) if session_id
                       else self.router.for_new())
            if replica in tried:
                break
            tried.append(replica)
            stream = self.handles[replica].forward.remote(*call)
            self.router.in_flight[replica] += 1
            try:
                first = await asyncio.wait_for(stream.__anext__(), self.accept_timeout_s)
                if first == ACCEPTED:
                    return replica, stream
                reason = f"answered {first!r} instead of taking the request"
            except asyncio.TimeoutError:
                reason = f"did not take the request within {self.accept_timeout_s:g} s"
            except (StopAsyncIteration, *LOST) as exc:
                reason = f"is gone ({type(exc).__name__}: {exc})"
            log.warning("replica %s %s: marked down; the request goes to the next one",
                        self.names[replica], reason.splitlines()[0] if reason else "")
            stream.cancel()
            self._lost(replica)
        return tried[-1], None

    async def _body(self, stream, replica: int, sse: bool) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in stream:
                yield chunk
            finished = True
        except LOST as exc:
            finished = True
            log.warning("replica %s died during a response: marked down (%s)",
                        self.names[replica], type(exc).__name__)
            self.router.mark_down(replica)
            if sse:
                yield ("data: " + json.dumps(error_body(
                    f"replica {self.names[replica]} died during this turn; whether it was "
                    "stored is unknown: GET /v1/sessions/{id} shows what the session holds",
                    "server_error", "replica_lost")) + "\n\n").encode()
        finally:
            self.router.in_flight[replica] -= 1
            if not finished:  # the client went away: stop the turn on the replica
                stream.cancel()

    def _lost(self, replica: int) -> None:
        self.router.in_flight[replica] -= 1
        self.router.mark_down(replica)


async def _read_body(request: Request, limits: Limits) -> bytes:
    """The whole body, refused (413) as soon as it is larger than the limit: the ingress holds
    it in memory before any replica sees it."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        limits.check_body(int(length))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        limits.check_body(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _session_of(method: str, path: str, body: bytes) -> str | None:
    """The stored session a request is about, if any; routing needs nothing else."""
    match = _SESSION_PATH.match(path)
    if match:
        return match.group(1)
    if method == "POST" and path == "/v1/chat/completions":
        try:
            value = json.loads(body).get("session_id")
        except (ValueError, AttributeError):
            return None  # the replica answers the malformed request with its 400
        return value if isinstance(value, str) and value else None
    return None


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.code), status_code=exc.status)
