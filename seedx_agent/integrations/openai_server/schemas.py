"""The wire format: OpenAI's request and reply shapes, plus SEED-X's documented extensions.

Clients written for OpenAI send and read these fields unchanged; what SEED-X adds (images and
boxes in the reply, the rendering options and ``session_id`` in the request) are extra fields
that such clients ignore, or send through ``extra_body``. Each extension carries a description
so that it shows in the server's OpenAPI page (``/docs``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ...turn_options import MAX_SEED


class _Lenient(BaseModel):
    # OpenAI clients send fields we do not use (temperature, user, …): accept and ignore them
    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Lenient):
    url: str = Field(description="a data URL (data:image/png;base64,…); remote URLs only when "
                                 "the operator allows them")


class TextContent(_Lenient):
    type: Literal["text"]
    text: str


class ImageContent(_Lenient):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Union[TextContent, ImageContent]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[ContentPart], None] = None


class RenderFields(_Lenient):
    """SEED-X's per-request options (extensions; the openai client sends them via extra_body)."""

    skill: str | None = Field(default=None, description="SEED-X extension: the skill that "
                              "phrases the prompt and acts on the reply (seedx plugins lists them)")
    variant: str | None = Field(default=None, description="SEED-X extension: the model variant "
                                "(GET /v1/models); overrides `model`")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED,
                             description="SEED-X extension: the de-tokenizer's noise seed")
    num_inference_steps: int | None = Field(default=None, ge=1, description="SEED-X extension: "
                                            "denoising steps for every generated image")
    guidance_scale: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                         description="SEED-X extension: classifier-free guidance")


class ChatCompletionRequest(RenderFields):
    model: str | None = Field(default=None, description="a variant (GET /v1/models) or the "
                              "served model's name")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    force_image: bool = Field(default=False, description="SEED-X extension: make the reply "
                              "start with a picture")
    session_id: str | None = Field(default=None, description="SEED-X extension: continue this "
                                   "stored session with its kept KV cache; `messages` is then "
                                   "the whole conversation and only what is beyond the stored "
                                   "history runs (a contradicting history is 409)")


class ImageGenerationRequest(RenderFields):
    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=4)
    response_format: Literal["b64_json"] | None = Field(
        default=None, description="only b64_json: the server never hosts URLs")


class SessionCreate(_Lenient):
    title: str = ""
    variant: str | None = None
    skill: str | None = Field(default=None, description="the session's default skill")


# --- replies -------------------------------------------------------------------------------------

class Box(BaseModel):
    """A box the model drew (SEED-X extension), in pixels of the image it is on."""

    label: str = Field(description="the phrase the box labels, or 'box N'")
    box: tuple[float, float, float, float] = Field(description="[x1, y1, x2, y2] in pixels")
    image_index: int | None = Field(description="index of the image it is on: among this "
                                    "turn's input images (target='input') or message.images")
    target: Literal["input", "generated", "canvas"] | None = None


class ReplyImage(BaseModel):
    type: Literal["image_url"] = "image_url"
    image_url: ImageUrl


class ReplyMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description="the text, with each box written as a readable label")
    images: list[ReplyImage] = Field(default_factory=list, description="SEED-X extension: "
                                     "generated or edited pictures as data URLs")
    boxes: list[Box] = Field(default_factory=list, description="SEED-X extension: the boxes "
                             "the model drew")


class Choice(BaseModel):
    index: int = 0
    message: ReplyMessage
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    session_id: str = Field(description="SEED-X extension: the stored session this turn is in; "
                            "send it back to continue")
    artifacts: list[str] = Field(default_factory=list, description="SEED-X extension: files "
                                 "the turn's skills wrote, as paths for GET "
                                 "/v1/sessions/{session_id}/artifacts/{path}")


def error_body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
