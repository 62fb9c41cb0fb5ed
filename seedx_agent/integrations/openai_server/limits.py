"""What one request may cost: its body, its pictures, its tokens and its time.

A shared server is only as available as its most expensive request allows, so each of these is
checked before the model is touched (time is the exception: it is enforced by cancelling the
turn, which the session rolls back). Every refusal is an `ApiError` with a 4xx status in OpenAI's
error shape, naming the limit and the flag that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass


class ApiError(Exception):
    """A request the server refuses; rendered as ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, code: str, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_new_tokens: int = 512
    request_timeout_s: float = 300.0

    def check_body(self, size: int) -> None:
        if size > self.max_body_bytes:
            raise ApiError(413, f"the request body is {size} bytes; this server takes at most "
                                f"{self.max_body_bytes} (seedx serve --max-body-bytes)",
                           "body_too_large")

    def check_pixels(self, width: int, height: int, which: str) -> None:
        if width * height > self.max_image_pixels:
            raise ApiError(413, f"{which} is {width}x{height} = {width * height} pixels; this "
                                f"server takes at most {self.max_image_pixels} "
                                "(seedx serve --max-image-pixels)", "image_too_large")

    def new_tokens(self, asked: int | None) -> int:
        """The reply's token budget: what the client asked, refused past the server's limit."""
        if asked is None:
            return self.max_new_tokens
        if asked > self.max_new_tokens:
            raise ApiError(400, f"max_tokens={asked} is more than this server's limit of "
                                f"{self.max_new_tokens} (seedx serve --max-new-tokens)",
                           "max_tokens_too_large")
        return asked

    def timed_out(self) -> ApiError:
        return ApiError(408, f"the request ran past {self.request_timeout_s:g} s and was "
                             "cancelled; nothing of it was kept (seedx serve --request-timeout)",
                        "request_timeout")
