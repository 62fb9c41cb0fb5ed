"""Image versions: every picture of a session, numbered, with the one it was made from.

An edit chain is a tree, not a list: the user edits a poster twice, goes back to the first edit
and edits that instead. The session keeps no separate state for it; the versions are *derived*
from the turns, so a stored, resumed or forked session has exactly the versions its turns made:

* every picture a turn holds (its parts; a failed turn's request images) is a new version the
  first time it appears, numbered from 1 in order of appearance;
* a version's ``parent`` is the version of the picture it was drawn from (its provenance's first
  parent: the source of an edit, the person of a try-on), or None;
* the **working version** is the last picture of the latest turn that has one, unless a later
  *revert turn* (``TurnRequest.revert_to``, written by ``Session.revert``) made an earlier
  version the working one again. The working image is what an edit without an image of its own
  edits, and what a follow-up question is about, so editing after a revert branches.

A picture can be referred to by ``"version:N"`` wherever a turn takes an image (the API, a
script's ``images``, chat's ``/image``), or by its `Version` or `ImagePart`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from .types import ImagePart

if TYPE_CHECKING:
    from .store import TurnRecord

VERSION_REF = re.compile(r"^version:(\d+)$")


class Version(BaseModel):
    """One picture of the session: its number, the picture, the turn that made it (or brought
    it in), the version it was made from, and what the user said in that turn."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    number: int
    image: ImagePart
    turn_index: int
    parent: int | None = None
    text: str = ""

    @property
    def image_id(self) -> str:
        return self.image.image_id


def turn_images(turn: "TurnRecord") -> list[ImagePart]:
    """The pictures of one turn, in order (a failed turn: its parts are the request images)."""
    return [p for p in turn.parts if isinstance(p, ImagePart)]


def versions(history: Sequence["TurnRecord"]) -> list[Version]:
    """Every version the turns made, in order (module doc)."""
    out: list[Version] = []
    number_of: dict[str, int] = {}
    for turn in history:
        for image in turn_images(turn):
            if image.image_id in number_of:
                continue
            parents = image.provenance.parents if image.provenance is not None else ()
            parent = number_of.get(parents[0]) if parents else None
            version = Version(number=len(out) + 1, image=image, turn_index=turn.index,
                              parent=parent, text=turn.request.text)
            number_of[image.image_id] = version.number
            out.append(version)
    return out


def working_version(history: Sequence["TurnRecord"]) -> Version | None:
    """The version an edit or a follow-up without an image of its own is about (module doc)."""
    known = versions(history)
    by_id = {v.image_id: v for v in known}
    for turn in reversed(history):
        if turn.request.revert_to is not None and turn.status == "done":
            return known[turn.request.revert_to - 1] if turn.request.revert_to <= len(known) else None
        images = turn_images(turn)
        if images:
            return by_id[images[-1].image_id]
    return None


def version_number(ref: Any) -> int | None:
    """N for ``"version:N"`` (or a `Version`), else None: ``ref`` is not a version reference."""
    if isinstance(ref, Version):
        return ref.number
    if isinstance(ref, str) and (match := VERSION_REF.match(ref.strip())):
        return int(match.group(1))
    return None


def lookup(known: Sequence[Version], number: int) -> Version:
    """Version ``number``, or a `LookupError` that says which versions there are."""
    if not 1 <= number <= len(known):
        have = f"versions 1..{len(known)}" if known else "no versions yet"
        raise LookupError(f"there is no version {number}: this session has {have} "
                          "(Session.versions(), /versions in chat)")
    return known[number - 1]


def describe(known: Sequence[Version], working: Version | None) -> str:
    """The version tree as lines a person reads (chat's ``/versions``)."""
    if not known:
        return "no images yet"
    lines = []
    for v in known:
        mark = "*" if working is not None and v.number == working.number else " "
        origin = f"from {v.parent}" if v.parent is not None else (
            "given" if v.image.role == "input" else "new")
        said = f" {v.text[:60]!r}" if v.text else ""
        lines.append(f"{mark} {v.number:>3}  {origin:<8} {v.image.role:<9} "
                     f"{v.image.width}x{v.image.height}  turn {v.turn_index}{said}")
    return "\n".join(lines) + "\n(* the working image; /revert N makes another one working)"
