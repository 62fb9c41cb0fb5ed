"""What the CLI shows while it waits: a status line while a model loads, a bar per denoised image.

Both write to stderr, so stdout carries only the conversation. On a terminal they animate (a
spinner with the elapsed seconds, a tqdm bar per image); anywhere else (a pipe, a CI log) they
print one plain line when the work ends, because carriage-return animations turn into noise in
a log file. Nothing here imports torch.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from .types import DenoiseStep

SPINNER = "|/-\\"


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream
        return False


@contextmanager
def status(message: str, stream: TextIO | None = None) -> Iterator[None]:
    """Show ``message`` with a spinner and the elapsed time while the block runs, then how long
    it took (or that it failed: the exception itself is the caller's to report)."""
    stream = stream or sys.stderr
    start = time.monotonic()
    stop = threading.Event()
    spinner = None
    if is_terminal(stream):
        def spin() -> None:
            frame = 0
            while not stop.wait(0.1):
                stream.write(f"\r{SPINNER[frame % 4]} {message} {time.monotonic() - start:4.1f}s")
                stream.flush()
                frame += 1

        spinner = threading.Thread(target=spin, name="seedx-status", daemon=True)
        spinner.start()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        if spinner is not None:
            stop.set()
            spinner.join()
            stream.write("\r\033[K")  # clear the spinner line
        stream.write(f"{message}: {outcome} in {time.monotonic() - start:.1f}s\n")
        stream.flush()


class DenoiseBars:
    """One progress bar per image being denoised, fed with ``DenoiseStep`` events."""

    def __init__(self, stream: TextIO | None = None, animate: bool | None = None):
        self.stream = stream or sys.stderr
        self.animate = is_terminal(self.stream) if animate is None else animate
        self._bars: dict[int, tqdm] = {}
        self._started: dict[int, float] = {}
        self._steps: dict[int, tuple[int, int]] = {}

    def step(self, event: DenoiseStep) -> None:
        index = event.index
        if index not in self._started:
            self._started[index] = time.monotonic()
            if self.animate:
                self._bars[index] = tqdm(total=event.total, desc=f"denoising image {index}",
                                         unit="step", file=self.stream, leave=False,
                                         dynamic_ncols=True)
        self._steps[index] = (event.step, event.total)
        bar = self._bars.get(index)
        if bar is not None:
            bar.update(event.step - bar.n)

    def done(self, index: int) -> None:
        """The image is finished (or abandoned): close its bar and say how long it took."""
        bar = self._bars.pop(index, None)
        if bar is not None:
            bar.close()
        started = self._started.pop(index, None)
        if started is None:
            return
        step, total = self._steps.pop(index, (0, 0))
        self.stream.write(f"denoised image {index}: {step}/{total} steps in "
                          f"{time.monotonic() - started:.1f}s\n")
        self.stream.flush()

    def close(self) -> None:
        for index in list(self._started):
            self.done(index)
