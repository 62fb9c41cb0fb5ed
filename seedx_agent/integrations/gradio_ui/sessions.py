"""The page's sessions: the stored list, and the live sessions behind it.

A live `seedx_agent.Session` keeps its KV cache, so going back to a session opened in this
server continues it without re-prefilling; a session from an earlier run is resumed from the
store. A fork copies the stored turns (`SessionStore.fork`) and continues as a new session, so
the original stays as it was.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .render import Message, PictureFiles, turn_messages


class SessionPool:
    def __init__(self, runtime: Any, store: Any):
        self.runtime = runtime
        self.store = store
        self._live: dict[str, Any] = {}
        self._guard = threading.Lock()

    def new(self, *, title: str = "") -> Any:
        session = self.runtime.open_session(store=self.store, title=title)
        with self._guard:
            self._live[session.id] = session
        return session

    def get(self, session_id: str) -> Any:
        with self._guard:
            if session_id not in self._live:
                self._live[session_id] = self.runtime.open_session(store=self.store,
                                                                   session_id=session_id)
            return self._live[session_id]

    def fork(self, session_id: str) -> Any:
        """A new session holding every turn of ``session_id``."""
        last = self.store.next_index(session_id) - 1
        if last < 0:
            raise ValueError("a session without turns has nothing to fork")
        return self.get(self.store.fork(session_id, last).id)

    def choices(self) -> list[tuple[str, str]]:
        """The stored sessions, newest first, as (label, id) for the session list."""
        listed = []
        for record in reversed(self.store.list_sessions()):
            turns = self.store.next_index(record.id)
            title = record.title or "untitled"
            forked = " (fork)" if record.parent is not None else ""
            listed.append((f"{title}{forked} · {turns} turn{'s' * (turns != 1)} · "
                           f"{record.id[:8]}", record.id))
        return listed

    def transcript(self, session: Any, pictures: PictureFiles) -> list[Message]:
        messages: list[Message] = []
        for turn in session.history:
            messages += turn_messages(turn, pictures)
        return messages


def artifacts(session: Any) -> list[str]:
    """Every file the session's skills wrote that is still there, latest turn first, so the
    newest deck or storybook is on top of the downloads."""
    seen: list[str] = []
    for turn in reversed(session.history):
        for path in turn.artifacts:
            if path not in seen and Path(path).is_file():
                seen.append(path)
    return seen
