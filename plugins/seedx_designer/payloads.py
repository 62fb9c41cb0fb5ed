"""The designer's actions: what the model proposed, as versioned records of pictures by id.

Pictures are content hashes with their size, and the pictures the model drew carry their
`seedx_agent.Provenance`, so an action read back from the store says exactly what it was made
from and how, with no pixels in it. A field that is None is a picture the reply did not have
(the model answered in words, or its image run was cut off): the action still stands, and its
``warnings`` say what is missing.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field

from seedx_agent import Provenance


class Picture(BaseModel):
    """An image of the session, by content hash."""

    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Drawn(Picture):
    """A picture the model drew, and how."""

    provenance: Provenance | None = None


class Design(BaseModel):
    """A new design from words: the model's intent (its rationale) and the poster it drew."""

    version: ClassVar[int] = 1
    request: str = Field(description="what the user asked for")
    intent: str = Field(default="", description="the model's words: what it designed and why")
    poster: Drawn | None = None
    warnings: tuple[str, ...] = ()


class Suggest(BaseModel):
    """A suggestion for the user's picture, and the picture with it applied (an edit of it)."""

    version: ClassVar[int] = 1
    request: str
    suggestion: str = Field(default="", description="the model's words: what to change")
    before: Picture | None = None
    after: Drawn | None = None
    warnings: tuple[str, ...] = ()


class Edit(BaseModel):
    """One link of an edit chain: ``source`` edited by ``instruction`` into ``edited``.

    ``parent_id`` is the edited picture's first provenance parent: the picture the de-tokenizer
    was conditioned on, which is what ``Session.versions()`` takes as a version's parent. It
    equals ``source.image_id`` unless the picture was drawn from something else (warned)."""

    version: ClassVar[int] = 1
    instruction: str
    text: str = Field(default="", description="what the model said with the edit")
    source: Picture | None = None
    edited: Drawn | None = None
    parent_id: str | None = None
    warnings: tuple[str, ...] = ()
