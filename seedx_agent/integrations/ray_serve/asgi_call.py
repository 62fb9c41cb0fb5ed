"""One HTTP request through an ASGI app in this process, its response handed on as it comes.

httpx's ``ASGITransport`` would do the plumbing, but it collects the whole body before it
returns, which would turn a server-sent event stream into one late blob; this is the few lines
of ASGI that keep a stream a stream. The first item is the status and headers, the rest are body
chunks. Closing the iterator early tells the app the client disconnected, which is how a
streamed turn learns to stop (and roll back).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

_RUNNING: set[asyncio.Task] = set()  # apps still finishing after their client went away


async def call_asgi(app: Any, method: str, path: str, query: bytes,
                    headers: list[tuple[bytes, bytes]], body: bytes
                    ) -> AsyncIterator[dict[str, Any] | bytes]:
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
             "http_version": "1.1", "method": method, "scheme": "http", "path": path,
             "raw_path": path.encode(), "query_string": query, "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80),
             "state": {}}
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    task = asyncio.ensure_future(app(scope, receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    finished = False
    try:
        while True:
            message = await messages.get()
            if message is None:  # the app returned (or raised) before its body was complete
                task.result()
                raise RuntimeError(f"{method} {path}: the app ended without a complete response")
            if message["type"] == "http.response.start":
                yield {"status": message["status"],
                       "headers": [(k.decode("latin-1"), v.decode("latin-1"))
                                   for k, v in message.get("headers", [])]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    finished = True
                    return
    finally:
        gone.set()
        if not finished and not task.done():
            _RUNNING.add(task)  # let it wind down (a cancelled turn still rolls back)
            task.add_done_callback(_RUNNING.discard)
