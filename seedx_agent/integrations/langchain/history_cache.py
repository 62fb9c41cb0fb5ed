"""The conversations a `ChatSeedX` keeps, found again by a hash of the exact history.

LangChain is stateless: every call sends the whole conversation. Re-prefilling it each time
makes turn N cost O(N); keeping the `Session` (and its KV cache) of each conversation this chat
model answered, keyed by what LangChain will send back next time, makes it O(1) again.

The key is a sha256 over every message's role, text, images (by `content_hash`: the same
pixels sent as PNG or as WebP are one key) and boxes, in order. An entry is taken
out while a call runs on it, so two concurrent calls with the same history never share one
session; the call puts it back under the new history's key. The cache is bounded by entry count
and by an estimate of the KV memory its sessions hold; the least recently used leave first.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

from .messages import Item, Message


def history_key(messages: Sequence[Message]) -> str:
    """sha256 of the exact conversation: per message its role, its text, its images' content
    hashes and its boxes, each in order.

    Texts, images and boxes are hashed as three sequences rather than one interleaved one:
    the model reads a message's images before its text whatever order the blocks came in, and
    LangChain's chunk merging moves a streamed reply's text in front of its pictures."""
    digest = hashlib.sha256(b"seedx-langchain-history-v1\n")
    for message in messages:
        digest.update(f"\x1e{message.role}\n".encode())
        digest.update(b"\x1ft" + message.text.encode())
        for kind in ("image", "box"):
            for item in message.items:
                if item.kind == kind:
                    digest.update(_item_bytes(item))
    return digest.hexdigest()


def _item_bytes(item: Item) -> bytes:
    if item.kind == "image":
        return b"\x1fi" + item.image_id.encode()
    return b"\x1fb" + json.dumps(item.box, sort_keys=True).encode()


@dataclass
class _Entry:
    session: Any
    size: int


class HistoryCache:
    """Kept sessions by history key, least recently used first out (module doc).

    ``max_entries`` and ``max_bytes`` bound it; ``size_of(session)`` estimates what an entry
    holds (the chat model passes the sessions' KV-cache size). ``hits`` and ``misses`` count
    lookups, for tests and benchmarks.
    """

    def __init__(self, *, max_entries: int = 8, max_bytes: int = 2 << 30,
                 size_of: Any = None):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of or (lambda session: 0)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def take(self, key: str) -> Any | None:
        """The session kept for ``key``, removed from the cache while the caller uses it."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            return entry.session

    def put(self, key: str, session: Any) -> list[Any]:
        """Keep ``session`` under ``key`` as the most recent entry; returns the sessions that
        had to leave to stay within the bounds (an entry bigger than ``max_bytes`` on its own
        is not kept at all)."""
        size = int(self._size_of(session))
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = _Entry(session, size)
            evicted = []
            while self._entries and (len(self._entries) > self.max_entries
                                     or self.total_bytes > self.max_bytes):
                _, entry = self._entries.popitem(last=False)
                evicted.append(entry.session)
            return evicted

    def sessions(self) -> list[Any]:
        """The kept sessions, least recently used first."""
        with self._lock:
            return [e.session for e in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
