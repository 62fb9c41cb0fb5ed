"""What the CLI shows while it waits: a line while a model loads, a bar per image being denoised.

Both go to stderr, so stdout carries only the conversation. On a terminal, rich draws them (a
spinner with the elapsed time; a bar with the steps and the time left) and clears them when the
wait ends. Anywhere else (a pipe, a CI log) nothing animates, because carriage-return frames turn
into noise in a log file. Either way every finished wait leaves one plain line saying what it
was and how long it took. Nothing here imports torch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskID,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)

from .types import DenoiseStep


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream
        return False


def _progress(stream: TextIO, *columns) -> Progress:
    # No redirection: the conversation is written to stdout directly, and streamed text must not
    # wait in rich's line buffer.
    return Progress(*columns, console=Console(file=stream), transient=True,
                    redirect_stdout=False, redirect_stderr=False)


@contextmanager
def status(message: str, stream: TextIO | None = None,
           animate: bool | None = None) -> Iterator[None]:
    """Show ``message`` with a spinner and the elapsed time while the block runs, then one line:
    done or failed, and how long it took (the exception itself is the caller's to report)."""
    stream = stream or sys.stderr
    animate = is_terminal(stream) if animate is None else animate
    started = time.monotonic()
    spinner = None
    if animate:
        spinner = _progress(stream, SpinnerColumn(), TextColumn("{task.description}"),
                            TimeElapsedColumn())
        spinner.add_task(message, total=None)
        spinner.start()
    outcome = "interrupted"
    try:
        yield
        outcome = "done"
    except Exception:
        outcome = "failed"
        raise
    finally:
        if spinner is not None:
            spinner.stop()
        stream.write(f"{message}: {outcome} in {time.monotonic() - started:.1f}s\n")
        stream.flush()


class DenoiseBars:
    """One bar per image being denoised, fed with ``DenoiseStep`` events; ``done(index)`` when
    the image is finished (or abandoned)."""

    def __init__(self, stream: TextIO | None = None, animate: bool | None = None):
        self.stream = stream or sys.stderr
        self.animate = is_terminal(self.stream) if animate is None else animate
        self._bars: Progress | None = None
        self._tasks: dict[int, TaskID] = {}
        self._started: dict[int, float] = {}
        self._steps: dict[int, tuple[int, int]] = {}

    def step(self, event: DenoiseStep) -> None:
        index = event.index
        if index not in self._started:
            self._started[index] = time.monotonic()
            if self.animate:
                if self._bars is None:
                    self._bars = _progress(self.stream, TextColumn("{task.description}"),
                                           BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
                                           TimeElapsedColumn(), TimeRemainingColumn())
                    self._bars.start()
                self._tasks[index] = self._bars.add_task(f"denoising image {index}",
                                                         total=event.total)
        self._steps[index] = (event.step, event.total)
        if self._bars is not None and index in self._tasks:
            self._bars.update(self._tasks[index], completed=event.step, total=event.total)

    def done(self, index: int) -> None:
        """Close the image's bar and say how long it took."""
        started = self._started.pop(index, None)
        if started is None:
            return
        task = self._tasks.pop(index, None)
        if self._bars is not None and task is not None:
            self._bars.remove_task(task)
            if not self._tasks:
                self._bars.stop()
                self._bars = None
        step, total = self._steps.pop(index, (0, 0))
        line = f"denoised image {index}: {step}/{total} steps in {time.monotonic() - started:.1f}s"
        if self._bars is not None:  # other bars still run: print above them, not through them
            self._bars.console.print(line, markup=False, highlight=False)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        for index in list(self._started):
            self.done(index)
