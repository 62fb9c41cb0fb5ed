"""How a turn looks in the terminal: the events of ``Session.turn`` rendered as they arrive.

The reply's text is streamed to stdout as it is decoded; every picture, box and action gets a
line of its own there too, so stdout reads as the conversation. Notices and errors go to stderr,
and so do the denoising bars (`seedx_agent.progress`), so that ``seedx … > log`` keeps the
conversation clean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TextIO

from ..progress import DenoiseBars
from ..types import (ActionEvent, BoxFound, DenoiseStep, ErrorEvent, Event, ImageDone, ImagePart,
                     ImageStarted, Notice, TextDelta, TurnDone)


class TurnPrinter:
    """Call it with each event of one turn. ``image_path`` says where a picture's file is."""

    def __init__(self, out: TextIO, err: TextIO, image_path: Callable[[str], Path]):
        self.out, self.err = out, err
        self.image_path = image_path
        self.bars = DenoiseBars(err)
        self._midline = self._after_label = False

    def begin(self, label: str) -> None:
        """Start the reply with ``label`` (e.g. ``seedx> ``); its first line may follow it."""
        self.out.write(label)
        self.out.flush()
        self._midline = self._after_label = True

    def end_line(self) -> None:
        if self._midline:
            self.out.write("\n")
            self.out.flush()
        self._midline = self._after_label = False

    def line(self, text: str, stream: TextIO | None = None) -> None:
        """``text`` on a line of its own (after the label, when nothing else was written yet)."""
        stream = stream or self.out
        if not (self._after_label and stream is self.out):
            self.end_line()
        self._midline = self._after_label = False
        stream.write(text + "\n")
        stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.out.write(event.text)
            self.out.flush()
            self._midline = not event.text.endswith("\n")
            self._after_label = False
        elif isinstance(event, ImageStarted):
            self.line(f"[image {event.index} started]")
        elif isinstance(event, DenoiseStep):
            if self.bars.animate:
                self.end_line()  # a bar needs a line of its own
            self.bars.step(event)
        elif isinstance(event, ImageDone):
            self.end_line()  # the bar's last line (stderr) must not land inside a reply line
            self.bars.done(event.index)
            self.line(f"[image {event.index}: {describe_image(event.image)} -> "
                      f"{self.image_path(event.image.image_id)}]")
        elif isinstance(event, BoxFound):
            box = event.box
            self.line(f"[box {box.phrase or '(no phrase)'!r}: centre/size bins {list(box.bins)}]")
        elif isinstance(event, ActionEvent):
            action = event.action
            summary = f": {event.summary}" if getattr(event, "summary", "") else ""
            self.line(f"[action {action.skill}.{action.action} v{action.version}{summary}]")
            for path in getattr(event, "artifacts", ()):
                self.line(f"  wrote {path}")
        elif isinstance(event, Notice):
            self.line(f"note: {event.message}", self.err)
        elif isinstance(event, ErrorEvent):
            self.line(f"error ({event.source}): {event.message}", self.err)
        elif isinstance(event, TurnDone):
            self.end_line()
            self.bars.close()
            self.line(f"[turn {event.turn_index}: {event.finish_reason}]")


def describe_image(image: ImagePart) -> str:
    """``generated 64x64 1a2b3c…, seed 42, 4 steps, guidance 5.0``: what it is and how it was
    made, so the user sees that ``/set`` took effect."""
    text = f"{image.role} {image.width}x{image.height} {image.image_id[:12]}"
    made = image.provenance
    if made is None:
        return text
    parents = tuple(getattr(made, "parents", ()) or ())
    if parents:
        names = ", ".join(p[:12] for p in parents)
        text += f", edit of {names}" if image.role == "edited" and len(parents) == 1 \
            else f", made from {names}"
    for value, unit in ((made.seed, "seed {}"), (made.num_inference_steps, "{} steps"),
                        (made.guidance_scale, "guidance {}"),
                        (made.image_guidance_scale if image.role == "edited" else None,
                         "image guidance {}")):
        if value is not None:
            text += ", " + unit.format(value)
    return text
