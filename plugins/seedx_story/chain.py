"""Which steps make up the story a step ends: the chain of continuations behind it.

A step continues an earlier step when its scene is that step's next scene (the picture it
drew): that is how ``steps=N`` feeds each step, and how a user continues by hand (no image, so
the session's latest picture, or ``version:N``). Walking back from the newest step along that
link gives its story, oldest first. A step whose scene no earlier step drew (a new picture from
the user) starts a new story. Going back to an older picture and continuing from it branches:
the new book holds the steps up to that picture, then the new ones, and the abandoned ones stay
in the earlier turns' books. When two earlier steps drew the same picture (a replayed or seeded
step), the later one is taken: it is the one the user last saw.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar


class _Picture(Protocol):
    image_id: str


class _Step(Protocol):
    scene: _Picture
    next_scene: _Picture | None


S = TypeVar("S", bound=_Step)


def story_of(earlier: Sequence[S], last: S) -> list[S]:
    """The steps of ``last``'s story, oldest first, ending with ``last`` (see the module doc);
    ``earlier`` are the session's earlier steps, oldest first."""
    drew = {}
    for index, step in enumerate(earlier):
        if step.next_scene is not None:
            drew[step.next_scene.image_id] = index  # a later step drawing it again wins
    chain, step, before = [last], last, len(earlier)
    while (index := drew.get(step.scene.image_id)) is not None and index < before:
        step, before = earlier[index], index  # strictly older: a loop of pictures cannot hang
        chain.append(step)
    return chain[::-1]
