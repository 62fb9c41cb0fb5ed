"""Live sessions by id: each stored session a client continues, with its kept KV cache.

A `Session` is not safe on two threads at once and holds the expensive part of a conversation
(its cache), so the server keeps one per id, hands it to one request at a time (``use``), and
drops the least recently used past ``capacity`` (a dropped one resumes from the store, paying one
re-prefill). Requests of different sessions never share anything but the runtime, whose device
locks make them queue fairly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from ...store import SessionNotFound
from .limits import ApiError

if TYPE_CHECKING:
    from ...runtime import Runtime
    from ...session import Session
    from ...store import SessionStore


class LiveSessions:
    def __init__(self, runtime: "Runtime", store: "SessionStore", *, capacity: int = 32,
                 max_new_tokens: int | None = None):
        self.runtime, self.store, self.capacity = runtime, store, capacity
        self.max_new_tokens = max_new_tokens
        self._live: OrderedDict[str, tuple["Session", threading.Lock]] = OrderedDict()
        self._guard = threading.Lock()

    def create(self, *, title: str = "", variant: str | None = None,
               skill: str | None = None) -> "Session":
        try:
            session = self.runtime.open_session(store=self.store, title=title, variant=variant,
                                                default_skill=skill,
                                                max_new_tokens=self.max_new_tokens)
        except KeyError as exc:
            raise ApiError(400, str(exc.args[0] if exc.args else exc), "unknown_variant") from None
        with self._guard:
            self._keep(session.id, session, threading.Lock())
        return session

    @contextmanager
    def use(self, session_id: str) -> Iterator["Session"]:
        """The live session ``session_id``, held for this request alone (404 if unknown)."""
        with self._guard:
            entry = self._live.get(session_id)
            if entry is not None:
                self._live.move_to_end(session_id)
        if entry is None:
            entry = self._resume(session_id)
        session, lock = entry
        with lock:
            yield session

    def _resume(self, session_id: str) -> tuple["Session", threading.Lock]:
        try:
            session = self.runtime.open_session(store=self.store, session_id=session_id,
                                                max_new_tokens=self.max_new_tokens)
        except (SessionNotFound, ValueError):
            raise not_found(session_id) from None
        with self._guard:  # another request may have resumed it meanwhile: keep that one
            if session_id not in self._live:
                self._keep(session_id, session, threading.Lock())
            return self._live[session_id]

    def _keep(self, session_id: str, session: Any, lock: threading.Lock) -> None:
        self._live[session_id] = (session, lock)
        while len(self._live) > self.capacity:
            self._live.popitem(last=False)

    def forget(self, session_id: str) -> None:
        with self._guard:
            self._live.pop(session_id, None)


def not_found(session_id: str) -> ApiError:
    return ApiError(404, f"no session {session_id!r} (POST /v1/sessions creates one; GET "
                         "/v1/sessions lists them)", "session_not_found")
