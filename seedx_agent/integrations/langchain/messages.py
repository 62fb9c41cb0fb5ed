"""LangChain messages as SEED-X turns: what each message says, in order, with pictures decoded.

SEED-X has no system prompt and one speaker per side, so the conversation is read as
alternating user and assistant messages: system messages are put in front of the first user
message, consecutive messages of one side are joined, and the last message must be the user's.
Pictures arrive as standard image blocks (``{"type": "image", "base64": …, "mime_type": …}``)
or as OpenAI-style ``image_url`` data URLs; a remote URL is refused, because nothing here
fetches from the network. The assistant's own pictures and boxes come back as the blocks
`ChatSeedX` wrote, and are read so that the history key and a rebuilt conversation see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

from seedx_agent.data_urls import decode_base64, decode_data_url

ROLES = {"human": "user", "HumanMessageChunk": "user", "system": "system",
         "SystemMessageChunk": "system", "ai": "assistant", "AIMessageChunk": "assistant"}


@dataclass(frozen=True)
class Item:
    """One piece of a message: text, a picture (with its content hash) or a box."""

    kind: Literal["text", "image", "box"]
    text: str = ""
    image: Any = None       # PIL image
    image_id: str = ""
    box: dict | None = None  # {"bins": [...], "phrase": ...}


@dataclass
class Message:
    role: Literal["user", "assistant"]
    items: list[Item] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(i.text for i in self.items if i.kind == "text")

    @property
    def images(self) -> list[Any]:
        return [i.image for i in self.items if i.kind == "image"]


class UnsupportedContent(ValueError):
    """A message this chat model cannot read (a remote URL, a tool message, audio, …)."""


def read_conversation(messages: Sequence[Any]) -> list[Message]:
    """The conversation as alternating user / assistant `Message`s, ending with the user's."""
    system: list[Item] = []
    out: list[Message] = []
    for message in messages:
        role = ROLES.get(message.type)
        if role is None:
            raise UnsupportedContent(
                f"ChatSeedX cannot read a {message.type!r} message: SEED-X has no native tool "
                "calling; pass tool results back as a human message")
        items = _items(message.content)
        if role == "system":
            system += items
            continue
        if out and out[-1].role == role:
            out[-1].items = _joined(out[-1].items, items)
        else:
            out.append(Message(role=role, items=items))
    if not out or out[-1].role != "user":
        raise UnsupportedContent("the last message must be a human message")
    if system:
        first = next(m for m in out if m.role == "user")
        first.items = _joined(system, first.items)
    if out[0].role == "assistant":  # an assistant greeting first: SEED-X starts with the user
        out.insert(0, Message(role="user"))
    for message in out:
        message.items = _merge_texts(message.items)
    return out


def _joined(a: list[Item], b: list[Item]) -> list[Item]:
    if a and b and a[-1].kind == "text" and b[0].kind == "text":
        return [*a, Item("text", text="\n"), *b]
    return [*a, *b]


def _merge_texts(items: list[Item]) -> list[Item]:
    """Adjacent texts as one (streamed chunks and whole replies give the same key)."""
    merged: list[Item] = []
    for item in items:
        if item.kind == "text" and not item.text:
            continue
        if item.kind == "text" and merged and merged[-1].kind == "text":
            merged[-1] = Item("text", text=merged[-1].text + item.text)
        else:
            merged.append(item)
    return merged


def _items(content: Any) -> list[Item]:
    if isinstance(content, str):
        return [Item("text", text=content)]
    items = []
    for block in content:
        if isinstance(block, str):
            items.append(Item("text", text=block))
            continue
        kind = block.get("type")
        if kind == "text":
            items.append(Item("text", text=block.get("text", "")))
        elif kind == "image_url":
            url = block["image_url"]
            items.append(_image(_data_url(url["url"] if isinstance(url, dict) else url)))
        elif kind == "image":
            items.append(_image(_standard_image(block)))
        elif kind == "non_standard" and isinstance(block.get("value"), dict) \
                and block["value"].get("seedx") == "box":
            value = block["value"]
            items.append(Item("box", box={"bins": list(value["bins"]),
                                          "phrase": value.get("phrase")}))
        elif kind in ("reasoning", "non_standard"):
            continue  # nothing SEED-X can read, and nothing it wrote
        else:
            raise UnsupportedContent(f"ChatSeedX reads text and images, not {kind!r} blocks")
    return items


def _standard_image(block: dict) -> bytes:
    if block.get("base64") or block.get("source_type") == "base64":
        return _b64(block.get("base64") or block.get("data", ""))
    if block.get("url"):
        return _data_url(block["url"])
    raise UnsupportedContent("an image block needs base64 data or a data: URL "
                             "(file ids are not supported)")


def _data_url(url: str) -> bytes:
    if not url.startswith("data:"):
        raise UnsupportedContent(
            f"ChatSeedX does not fetch remote images ({url[:60]}): send the picture itself, as "
            "base64 or a data: URL")
    try:
        return decode_data_url(url)
    except ValueError as exc:
        raise UnsupportedContent(f"an image: {exc}") from None


def _b64(data: str) -> bytes:
    try:
        return decode_base64(data)
    except ValueError as exc:
        raise UnsupportedContent(f"an image is {exc}") from None


def _image(raw: bytes) -> Item:
    """Through the product's front door for untrusted pictures (size limits before decoding,
    a full decode, EXIF orientation), like every other way a picture comes in."""
    from core_models.image_io import ImageInputError, content_hash, load_image

    try:
        image = load_image(raw)
    except ImageInputError as exc:
        raise UnsupportedContent(str(exc)) from None
    return Item("image", image=image, image_id=content_hash(image))
