"""The value types an application or a skill sees: parts, actions and events.

SEED-X answers with one interleaved stream of text, ``<box_start><loc-…>…<box_end>`` boxes and
``<img>…</img>`` image runs. Nobody outside the runtime should ever see those strings, so the
runtime turns each reply into *parts* (what the model said), skills turn parts into *actions*
(what should happen), and a turn is observed as a stream of *events*.

All of them are pydantic v2 models with a ``type`` discriminator, carry a ``schema_version`` so
stored sessions can be migrated, round-trip through JSON, and never hold tensors or PIL images:
an image is referenced by the sha256 of its content (``image_id``) and lives in the image store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

SCHEMA_VERSION = 1
LOC_BINS = 224  # <loc-0> … <loc-223>


class _Value(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = SCHEMA_VERSION


# --- parts: what the model said -------------------------------------------------------------

class TextPart(_Value):
    type: Literal["text"] = "text"
    text: str
    warnings: tuple[str, ...] = ()

    def to_content_block(self) -> dict[str, Any]:
        from langchain_core.messages.content import create_text_block
        return create_text_block(self.text)


class Provenance(_Value):
    """Enough to say exactly how a picture was made, and to make it again."""

    model: str
    variant: str
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    image_guidance: float | None = None
    scheduler: str | None = None
    detokenizer_stage: Literal[1, 2] | None = None
    weights_fingerprint: str | None = None
    parent_image: str | None = None


class ImagePart(_Value):
    """An image in the conversation: an input, or one the model generated or edited."""

    type: Literal["image"] = "image"
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    role: Literal["input", "generated", "edited"] = "input"
    provenance: Provenance | None = None
    warnings: tuple[str, ...] = ()

    def to_content_block(self) -> dict[str, Any]:
        from langchain_core.messages.content import create_image_block
        return create_image_block(file_id=self.image_id, mime_type="image/png",
                                  width=self.width, height=self.height, role=self.role)


class BoxPart(_Value):
    """A box as SEED-X emits it: centre-x, centre-y, width, height in 224 bins of its target.

    ``pixel_xyxy`` is filled in when the target's size is known (an input image, a generated
    image, or a layout canvas) and is clipped to it.
    """

    type: Literal["box"] = "box"
    bins: tuple[int, int, int, int]
    phrase: str | None = None
    target_image: str | None = None
    target_kind: Literal["input", "generated", "canvas"] | None = None
    pixel_xyxy: tuple[float, float, float, float] | None = None
    warnings: tuple[str, ...] = ()

    @field_validator("bins")
    @classmethod
    def _in_range(cls, bins: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(not 0 <= b < LOC_BINS for b in bins):
            raise ValueError(f"loc bins must be in [0, {LOC_BINS}), got {bins}")
        return bins

    def on(self, width: int, height: int, *, target_image: str | None = None,
           target_kind: Literal["input", "generated", "canvas"] | None = None) -> "BoxPart":
        """This box placed on a ``width`` x ``height`` target (official rule: value/224 * size)."""
        cx, cy, w, h = (b / LOC_BINS for b in self.bins)
        x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
        y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
        clip = lambda v, hi: float(min(max(v, 0.0), hi))  # noqa: E731
        xyxy = (clip(x0, width), clip(y0, height), clip(x1, width), clip(y1, height))
        return self.model_copy(update=dict(pixel_xyxy=xyxy, target_image=target_image,
                                           target_kind=target_kind))

    def to_content_block(self) -> dict[str, Any]:
        from langchain_core.messages.content import create_non_standard_block
        return create_non_standard_block({"seedx": "box", **self.model_dump(mode="json")})


Part = Annotated[Union[TextPart, ImagePart, BoxPart], Field(discriminator="type")]
PART_ADAPTER: TypeAdapter[Part] = TypeAdapter(Part)


def parts_to_content_blocks(parts: list[Part]) -> list[dict[str, Any]]:
    """langchain-core v1 standard content blocks for ``parts`` (boxes as non-standard blocks)."""
    return [p.to_content_block() for p in parts]


# --- actions: what a skill decided should happen ---------------------------------------------

class Action(_Value):
    """The envelope every skill's action travels in.

    The host only knows the envelope; ``payload`` is validated by the skill that owns
    ``(skill, type, version)``, so a third-party action persists and reloads even when its
    plugin is not installed (it is then kept as an opaque dict).
    """

    type: Literal["action"] = "action"
    skill: str
    action: str
    version: int = 1
    payload: dict[str, Any] = Field(default_factory=dict)


# --- events: how a turn is observed ------------------------------------------------------------

class TextDelta(_Value):
    type: Literal["text_delta"] = "text_delta"
    text: str


class BoxFound(_Value):
    type: Literal["box"] = "box"
    box: BoxPart


class ImageStarted(_Value):
    type: Literal["image_started"] = "image_started"
    index: int


class DenoiseStep(_Value):
    type: Literal["denoise_step"] = "denoise_step"
    index: int
    step: int
    total: int


class ImageDone(_Value):
    type: Literal["image_done"] = "image_done"
    index: int
    image: ImagePart


class ActionEvent(_Value):
    type: Literal["action_event"] = "action_event"
    action: Action


class ErrorEvent(_Value):
    type: Literal["error"] = "error"
    source: str
    message: str


class Notice(_Value):
    """Something the user should know that is not an error (e.g. old turns left the context)."""

    type: Literal["notice"] = "notice"
    message: str


class TurnDone(_Value):
    type: Literal["turn_done"] = "turn_done"
    turn_index: int
    parts: tuple[Part, ...] = ()
    actions: tuple[Action, ...] = ()
    finish_reason: Literal["eos", "max_new_tokens", "cancelled", "error"] = "eos"


Event = Annotated[Union[TextDelta, BoxFound, ImageStarted, DenoiseStep, ImageDone, ActionEvent,
                        ErrorEvent, Notice, TurnDone], Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
