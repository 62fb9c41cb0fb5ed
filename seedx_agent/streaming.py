"""Progress from a callback-driven job (the denoiser) as events of a generator (a turn).

The denoiser reports each step through a callback, but a turn is a generator the caller iterates:
`streamed` runs the job on a worker thread and yields what it emits, so ``DenoiseStep`` events
reach the caller while the picture is being made, and a cancelled denoise ends the turn as
`Cancelled`.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

from .types import Event


class Cancelled(Exception):
    """The user cancelled the turn (in the LLM or in the denoiser)."""


def streamed(work: Callable[[Callable[[Event], None]], Any]) -> Iterator[Event]:
    """Run ``work(emit)`` on a worker thread, yielding what it emits; returns its result.

    The denoiser reports progress through a callback, but a turn is a generator: this bridges
    the two so that ``DenoiseStep`` events reach the caller while the image is being made.
    """
    from core_models.detokenizer import DenoisingCancelled

    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work(events.put)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc
        finally:
            events.put(streamed)

    threading.Thread(target=run, name="seedx-render", daemon=True).start()
    while (item := events.get()) is not streamed:
        yield item
    if isinstance(outcome.get("error"), DenoisingCancelled):
        raise Cancelled()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
