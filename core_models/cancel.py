"""Cancellation, under one name across the product: ``cancel``.

Long work (LLM decoding, SDXL denoising) takes a ``cancel`` argument: a ``threading.Event`` the
caller sets from anywhere (a UI button, Ctrl-C, another thread), or a zero-argument callable
that turns true when the work should stop. The work checks it between steps, never inside one,
so a cancelled run always stops in a consistent state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Union

CancelCheck = Union[threading.Event, Callable[[], bool], None]


def is_cancelled(cancel: CancelCheck) -> bool:
    """Whether ``cancel`` has fired (None never does)."""
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())
