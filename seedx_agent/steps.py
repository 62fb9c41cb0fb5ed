"""``steps=N``: one request, N recorded turns, each reading the picture the one before drew.

What a story needs ("Continue the story." for five scenes) and what a user expects of it: every
step is an ordinary turn (its own events, its own ``TurnDone``, its own row in the store, its own
skill actions), so progress, cancelling and resuming need nothing new. A step's picture goes
back in as the next step's image, re-encoded from its pixels like any picture the user gives
(docs/skills/story.md says why pixels and not the generated features). The loop stops early,
with a notice that says why, when a step fails, is cancelled or draws nothing.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterator

from .turn_options import TurnOptions
from .types import Event, ImagePart, Notice, TurnDone

OneTurn = Callable[[str, list[Any], TurnOptions, threading.Event], Iterator[Event]]


def run_steps(turn: OneTurn, text: str, images: list[Any], options: TurnOptions,
              cancel: threading.Event) -> Iterator[Event]:
    """Run ``turn`` ``options.steps`` times (see the module doc); yields every step's events,
    each step preceded by a ``Notice`` "step k/N"."""
    total = options.steps or 1
    each = options.merged(steps=None)
    for step in range(1, total + 1):
        if cancel.is_set():
            yield Notice(message=f"stopped before step {step} of {total}: cancelled")
            return
        yield Notice(message=f"step {step}/{total}")
        done: TurnDone | None = None
        for event in turn(text, images, each, cancel):
            if isinstance(event, TurnDone):
                done = event
            yield event
        drawn = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
        why = ("it was cancelled" if done.finish_reason == "cancelled" else
               "it failed" if done.finish_reason == "error" else
               "it drew no picture" if not drawn else None)
        if why is not None and step < total:
            yield Notice(message=f"stopped after step {step} of {total}: {why}")
            return
        images = [drawn[-1]]
