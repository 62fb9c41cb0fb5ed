"""OpenAI messages to SEED-X turns, and a turn's parts back to an OpenAI message.

SEED-X keeps a conversation's KV cache, so a turn must never be run twice: a chat request that
continues a stored session carries the whole conversation (as OpenAI clients send it), is
checked against the stored turns, and only the user messages beyond them run. A history that
says something else than what was stored cannot be reconciled with the cache: it is refused
(409) rather than silently forked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable

from ...data_urls import decode_data_url, png_data_url
from ...types import BoxPart, ImagePart, Part, TextPart
from .limits import ApiError, Limits
from .schemas import Box, ChatMessage, ImageContent, ImageUrl, ReplyImage, ReplyMessage


@dataclass
class UserTurn:
    text: str
    images: list[bytes]


def decode_image(url: str, limits: Limits, which: str, *, allow_remote: bool) -> bytes:
    """The bytes of one ``image_url``, with its size checked before the pixels are decoded."""
    if url.startswith("data:"):
        try:
            data = decode_data_url(url)
        except ValueError as exc:
            raise ApiError(400, f"{which}: {exc}", "invalid_image") from None
    elif url.startswith(("http://", "https://")):
        if not allow_remote:
            raise ApiError(400, f"{which}: remote image URLs are off on this server; send the "
                                "picture as a data URL (or start it with --allow-remote-images)",
                           "remote_image_refused")
        data = _fetch(url, limits, which)
    else:
        raise ApiError(400, f"{which}: an image_url must be a data: or http(s) URL", "invalid_image")
    check_pixels(data, limits, which)
    return data


def check_pixels(data: bytes, limits: Limits, which: str) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
    except (UnidentifiedImageError, OSError):
        raise ApiError(400, f"{which}: not a readable picture", "invalid_image") from None
    limits.check_pixels(width, height, which)


def _fetch(url: str, limits: Limits, which: str) -> bytes:
    """A remote picture (only with --allow-remote-images), read no further than the body limit."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read(limits.max_body_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(400, f"{which}: could not fetch {url}: {exc}", "invalid_image") from None
    if len(data) > limits.max_body_bytes:
        raise ApiError(413, f"{which}: the remote picture is over {limits.max_body_bytes} bytes",
                       "image_too_large")
    return data


def _text_and_urls(message: ChatMessage) -> tuple[str, list[str]]:
    if message.content is None or isinstance(message.content, str):
        return message.content or "", []
    texts = [p.text for p in message.content if not isinstance(p, ImageContent)]
    urls = [p.image_url.url for p in message.content if isinstance(p, ImageContent)]
    return "\n".join(texts), urls


def user_turns(messages: list[ChatMessage], stored: list[Any], render: Callable[[Any], str],
               limits: Limits, *, allow_remote: bool) -> list[UserTurn]:
    """The turns to run: the user messages after the ``stored`` turns (whose user and assistant
    messages must come first, as they were). System messages are ignored: SEED-X was trained
    without one."""
    talk = [m for m in messages if m.role not in ("system", "developer")]
    for i, turn in enumerate(stored):
        pair = talk[2 * i:2 * i + 2]
        said, urls = _text_and_urls(pair[0]) if pair else ("", [])
        expected = render(turn)
        if (len(pair) < 2 or pair[0].role != "user" or pair[1].role != "assistant"
                or said != turn.request.text or len(urls) != len(turn.request.image_ids)
                or _squeezed(_text_and_urls(pair[1])[0]) != _squeezed(expected)):
            raise ApiError(409, f"the messages contradict the stored session at turn {i + 1}: "
                                f"it holds {len(stored)} turn(s), the first being the user's "
                                f"{stored[0].request.text!r}; send the stored conversation "
                                "followed by the new message(s), or open a new session",
                           "history_conflict", "conflict_error")
    new = talk[2 * len(stored):]
    if not new:
        raise ApiError(400, "nothing new to answer: the messages end where the stored session "
                            "does", "no_new_message")
    turns = []
    for message in new:
        if message.role != "user":
            raise ApiError(409 if stored else 400,
                           "only user messages may follow the stored history: an assistant "
                           "message the server did not write cannot enter the model's cache"
                           + ("" if stored else "; continue a conversation with session_id"),
                           "history_conflict" if stored else "assistant_without_session",
                           "conflict_error" if stored else "invalid_request_error")
        text, urls = _text_and_urls(message)
        images = [decode_image(url, limits, f"image {k + 1} of message {talk.index(message) + 1}",
                               allow_remote=allow_remote) for k, url in enumerate(urls)]
        turns.append(UserTurn(text, images))
    return turns


def _squeezed(text: str) -> str:
    # a streamed reply's deltas and the plain reply may space a box label differently
    return "".join(text.split())


# --- a reply as an OpenAI message ----------------------------------------------------------------

def box_label(box: BoxPart, number: int) -> str:
    return box.phrase or f"box {number}"


def box_text(box: BoxPart, number: int) -> str:
    """A box written for people: ``[the car: 10, 20, 60, 80]`` (pixels, x1 y1 x2 y2)."""
    if box.pixel_xyxy is None:
        return f"[{box_label(box, number)}]"
    return f"[{box_label(box, number)}: {', '.join(str(round(v)) for v in box.pixel_xyxy)}]"


def reply_message(parts: tuple[Part, ...], input_ids: list[str],
                  png_of: Callable[[str], bytes]) -> ReplyMessage:
    """``parts`` as one assistant message: text with readable box labels, the turn's pictures as
    data URLs, and the boxes on the image they belong to."""
    pictures = [p for p in parts if isinstance(p, ImagePart) and p.role != "input"]
    picture_ids = [p.image_id for p in pictures]
    text, boxes, number = [], [], 0
    for part in parts:
        if isinstance(part, TextPart):
            text.append(part.text)
        elif isinstance(part, BoxPart):
            number += 1
            text.append(box_text(part, number))
            index = None
            if part.target_image in input_ids and part.target_kind == "input":
                index = input_ids.index(part.target_image)
            elif part.target_image in picture_ids:
                index = picture_ids.index(part.target_image)
            if part.pixel_xyxy is not None:
                boxes.append(Box(label=box_label(part, number), box=part.pixel_xyxy,
                                 image_index=index, target=part.target_kind))
        elif isinstance(part, ImagePart) and part.role != "input":
            text.append(f"[image {picture_ids.index(part.image_id) + 1}]")
    images = [ReplyImage(image_url=ImageUrl(url=png_data_url(png_of(i)))) for i in picture_ids]
    return ReplyMessage(content=_join(text), images=images, boxes=boxes)


def _join(pieces: list[str]) -> str:
    out = ""
    for piece in pieces:
        if out and piece and not out[-1].isspace() and piece[0] not in " .,;:!?)":
            out += " "
        out += piece
    return out


