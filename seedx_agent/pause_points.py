"""Named instants where a test can freeze the process, so it can be killed exactly there.

Crash safety is a claim about every instant of a save, but a test can only check the instants it
can reach: ``tests/test_crash_safety.py`` starts a session in a child process with
``SEEDX_PAUSE_AT=<name>`` and ``SEEDX_PAUSE_FILE=<path>``, waits until the child reaches that
point (it writes the name to the file, then sleeps), SIGKILLs it and opens the store. Outside
such a test neither variable is set and a point costs one environment lookup.

The points, in the order a turn reaches them:

* ``decoding``: the LLM has produced the turn's first token (nothing is saved yet);
* ``image_written``: a picture's file is on disk, its row not yet committed;
* ``in_transaction``: the turn's rows are inserted, the transaction not yet committed;
* ``committed``: the turn's transaction has just committed.
"""

from __future__ import annotations

import os
import time

POINTS = ("decoding", "image_written", "in_transaction", "committed")


def pause_point(name: str) -> None:
    """Sleep forever here if a test asked to pause at ``name``; otherwise return at once."""
    wanted = os.environ.get("SEEDX_PAUSE_AT")
    if not wanted or name not in wanted.split(","):
        return
    path = os.environ.get("SEEDX_PAUSE_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
    while True:  # the test kills us here
        time.sleep(3600)
