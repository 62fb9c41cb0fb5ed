"""Pictures as ``data:`` URLs and PNG bytes, the way every integration sends and receives them.

LangChain's image blocks, the OpenAI-style server and the web page all carry pictures inline as
base64 PNG; one decoder means one set of rules (base64 only, strict alphabet) and one message
for a bad URL, whatever the client.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def decode_base64(data: str) -> bytes:
    """Strict base64 -> bytes; ``ValueError`` says why not."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from None


def decode_data_url(url: str) -> bytes:
    """The bytes of a ``data:…;base64,…`` URL; ``ValueError`` for anything else."""
    if not url.startswith("data:"):
        raise ValueError(f"not a data: URL ({url[:60]})")
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise ValueError("a data: URL picture must be base64-encoded")
    return decode_base64(payload)


def png_bytes(image: "Image.Image") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + png_base64(png)
