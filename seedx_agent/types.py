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

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from core_models.boxes import LOC_BINS, bins_to_xyxy

SCHEMA_VERSION = 2
"""2: provenance says ``num_inference_steps`` / ``guidance_scale`` / ``image_guidance_scale`` /
``parents`` (1 said ``steps`` / ``guidance`` / ``image_guidance`` / ``parent_image``); action
events carry a summary and artifact paths; ``TurnDone`` carries errors and notices. Version-1
values still validate (`Provenance` renames the old fields as it reads them)."""


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
    """Enough to say exactly how a picture was made, and to make it again.

    The rendering fields have the names of the turn options that set them (`TurnOptions`), so a
    picture is re-made by passing its provenance back. ``parents`` are the images it was made
    from, in order: the source of an edit, the person and the garment of a try-on.
    """

    model: str
    variant: str
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    scheduler: str | None = None
    detokenizer_stage: Literal[1, 2] | None = None
    weights_fingerprint: str | None = None
    parents: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_version_1(cls, data: Any) -> Any:
        """Read a version-1 record: same values under the old names."""
        if not isinstance(data, dict) or data.get("schema_version", SCHEMA_VERSION) >= 2:
            return data
        data = dict(data)
        for old, new in (("steps", "num_inference_steps"), ("guidance", "guidance_scale"),
                         ("image_guidance", "image_guidance_scale")):
            if old in data:
                data[new] = data.pop(old)
        parent = data.pop("parent_image", None)
        data["parents"] = (parent,) if parent else ()
        data["schema_version"] = SCHEMA_VERSION
        return data


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
        x0, y0, x1, y1 = bins_to_xyxy(self.bins, width, height)
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
    """An action a skill carried out: the action, its one-line summary for the user and the
    files it wrote (absolute paths, which exist when the event is emitted)."""

    type: Literal["action_event"] = "action_event"
    action: Action
    summary: str = ""
    artifacts: tuple[str, ...] = ()


class ErrorEvent(_Value):
    type: Literal["error"] = "error"
    source: str
    message: str


class Notice(_Value):
    """Something the user should know that is not an error (e.g. old turns left the context)."""

    type: Literal["notice"] = "notice"
    message: str


class TurnDone(_Value):
    """The end of a turn and everything it left: what was said, done, refused and noticed.

    A failed turn (``finish_reason="error"``) says why in ``errors``; it is in the session's
    history and store too, marked failed. ``artifacts`` are every file the turn's skills wrote.
    """

    type: Literal["turn_done"] = "turn_done"
    turn_index: int
    parts: tuple[Part, ...] = ()
    actions: tuple[Action, ...] = ()
    errors: tuple[ErrorEvent, ...] = ()
    notices: tuple[Notice, ...] = ()
    artifacts: tuple[str, ...] = ()
    finish_reason: Literal["eos", "max_new_tokens", "cancelled", "error"] = "eos"

    @property
    def ok(self) -> bool:
        return self.finish_reason != "error" and not self.errors


Event = Annotated[Union[TextDelta, BoxFound, ImageStarted, DenoiseStep, ImageDone, ActionEvent,
                        ErrorEvent, Notice, TurnDone], Field(discriminator="type")]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
