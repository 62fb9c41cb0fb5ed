"""The session -> replica table: which replica holds a session's KV cache.

Ray Serve's model multiplexing routes a model id to a replica that has it loaded *if it can*,
and elsewhere otherwise; a session sent elsewhere would resume from the store and re-prefill,
and two replicas could then hold two diverging live copies of it. So the router decides, not
Serve: a session stays on the replica it was first seen on for as long as that replica answers.

* A new session (and a request of no session: images, models) goes to the live replica with
  the fewest requests in flight; the new session's id is learnt from the response
  (``x-seedx-session-id``) and pinned.
* A session the table has never seen (made before this router started, or by another one) goes
  to the live replica that rendezvous hashing picks for its id, the same one every time.
* A replica that failed is *down* for ``down_for_s``: its sessions move, one by one as they come,
  to the replica rendezvous hashing picks among the live ones, and are pinned there. When Ray has
  restarted the failed replica it gets new sessions again, but the moved ones stay where they
  went: no session flaps back.

Pure bookkeeping, no Ray: the ingress (ingress.py) calls it from one event loop.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable


class SessionRouter:
    def __init__(self, replicas: int, *, down_for_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if replicas < 1:
            raise ValueError(f"a router needs at least one replica, not {replicas}")
        self.replicas, self.down_for_s, self.clock = replicas, down_for_s, clock
        self.owner: dict[str, int] = {}
        self.in_flight = [0] * replicas
        self._down_until = [float("-inf")] * replicas
        self._turn = -1

    def live(self) -> list[int]:
        """Replicas not marked down; all of them when every one is (something must be tried)."""
        now = self.clock()
        up = [k for k in range(self.replicas) if self._down_until[k] <= now]
        return up or list(range(self.replicas))

    def for_session(self, session_id: str) -> int:
        live = self.live()
        owner = self.owner.get(session_id)
        if owner is None:  # pinned only once a replica's response names it (`learn`)
            return _rendezvous(session_id, live)
        if owner not in live:
            owner = self.owner[session_id] = _rendezvous(session_id, live)
        return owner

    def for_new(self) -> int:
        """The live replica with the fewest requests in flight; ties take turns, so that
        sessions opened one after another spread too."""
        live = self.live()
        fewest = min(self.in_flight[k] for k in live)
        tied = [k for k in live if self.in_flight[k] == fewest]
        self._turn += 1
        return tied[self._turn % len(tied)]

    def learn(self, session_id: str, replica: int) -> None:
        self.owner[session_id] = replica

    def forget(self, session_id: str) -> None:
        self.owner.pop(session_id, None)

    def mark_down(self, replica: int) -> None:
        self._down_until[replica] = self.clock() + self.down_for_s

    def is_down(self, replica: int) -> bool:
        return self._down_until[replica] > self.clock()


def _rendezvous(key: str, replicas: list[int]) -> int:
    """Highest-random-weight hashing: stable for a key, and removing a replica moves only the
    keys that were on it."""
    return max(replicas, key=lambda k: hashlib.blake2b(f"{k}:{key}".encode(),
                                                        digest_size=8).digest())
