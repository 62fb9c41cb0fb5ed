"""The one front door for pictures: anything a user hands us becomes a plain RGB image or a clear error.

Images arrive from paths, uploads (bytes), open files and other code (PIL images), and any of
them can be wrong: missing, not an image, cut off mid-download, a decompression bomb, a
one-pixel-wide strip. The product rule is "bad input gets a clear error and loses nothing", so
every such case raises one exception class, ``ImageInputError`` (a ``ValueError``), whose message
says what is wrong and what to do, and nothing else is touched (no global Pillow settings, no
mutation of the caller's image or file).

Order matters: the size limits are checked from the *header*, before a single pixel is decoded,
so a bomb costs nothing; then the whole image is decoded with ``.load()`` so that a truncated
file fails here and not later inside the ViT; then EXIF orientation is applied (phones store
portraits sideways) and the colours are flattened to 8-bit RGB, which is what the model sees.

The model's own any-res tiling (``any_res.py``) accepts any size, e.g. 1x1000, as upstream does;
the aspect-ratio limit here is a product policy for untrusted input and is configurable.

An animated picture file (GIF, APNG, animated WebP) is read as its **first frame**, which is
what a viewer shows before it plays and what a thumbnail is made of; SEED-X reads still
pictures, and guessing some other frame would make the answer depend on the file's timing.
"""

from __future__ import annotations

import hashlib
import io
import os
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # 8000x8000; a 48 Mpx phone photo fits, a bomb does not
DEFAULT_MAX_ASPECT_RATIO = 50.0  # longer side / shorter side

# Decoders we trust with untrusted bytes. Pillow can open more (EPS even shells out to
# Ghostscript), but nobody sends those to a chat model. JPEG includes MPO (multi-picture JPEG).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "TGA", "ICO", "AVIF", "QOI")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]


class ImageInputError(ValueError):
    """The input is not a usable picture; the message says why, for a person to read."""


# --- reading the bytes ----------------------------------------------------------------------


def _read_source(source: ImageSource) -> tuple[bytes | str, str]:
    """``(path or bytes, description)`` for a non-PIL source; the description names it in errors."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not os.path.exists(path):
            raise ImageInputError(f"image file not found: {path!r}")
        if os.path.isdir(path):
            raise ImageInputError(f"{path!r} is a directory, not an image file")
        return path, f"image file {path!r}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "image data"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        where = f"image file {name!r}" if isinstance(name, str) else "image stream"
        try:
            data = source.read()
        except OSError as exc:
            raise ImageInputError(f"could not read {where}: {exc}") from exc
        if isinstance(data, str):
            raise ImageInputError(f"{where} was opened in text mode; open it with mode 'rb'")
        return bytes(data), where
    raise ImageInputError(f"cannot load an image from a {type(source).__name__}; pass a file path, "
                          "bytes, a binary file object or a PIL image")


def _open_header(data: bytes | str, where: str) -> Image.Image:
    """``Image.open``: reads only the header, so the size is known before anything is decoded."""
    if isinstance(data, bytes) and not data:
        raise ImageInputError(f"{where} is empty (0 bytes)")
    if isinstance(data, str) and os.path.getsize(data) == 0:
        raise ImageInputError(f"{where} is empty (0 bytes)")
    try:
        return Image.open(data if isinstance(data, str) else io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"{where} declares too many pixels to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(f"{where} is not a recognised image (supported formats: "
                              f"{', '.join(ALLOWED_FORMATS)})") from exc
    except OSError as exc:
        raise ImageInputError(f"could not read {where}: {exc}") from exc
    except Exception as exc:  # malformed headers surface as SyntaxError, struct.error, ...
        raise ImageInputError(f"{where} has a corrupt header: {exc}") from exc


# --- checks and normalisation ---------------------------------------------------------------


def _check_size(size: tuple[int, int], where: str, max_pixels: int | None,
                max_aspect_ratio: float | None) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageInputError(f"{where} has zero size ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageInputError(
            f"{where} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; downscale it first or raise max_pixels")
    if max_aspect_ratio is not None:
        ratio = max(width, height) / min(width, height)
        if ratio > max_aspect_ratio:
            raise ImageInputError(
                f"{where} is {width}x{height}, an aspect ratio of {ratio:.1f}:1, beyond the limit "
                f"of {max_aspect_ratio:g}:1; crop it first or raise max_aspect_ratio")


def _decode(image: Image.Image, where: str) -> None:
    """Decode every pixel now, so truncated or corrupt data is reported here, not mid-model."""
    try:
        image.load()
    except Exception as exc:  # OSError for truncation, but decoders raise many types
        problem = "truncated (incomplete download or copy?)" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageInputError(f"{where} is {problem}: {exc}") from exc


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF Orientation tag says, as every photo viewer does.

    Broken EXIF metadata must not cost the user an otherwise-good picture, so on failure the
    pixels are kept as stored.
    """
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def _high_bit_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit greyscale to 8-bit ``L`` by scaling, not clipping.

    Pillow's own ``convert`` clips ``I;16`` values above 255, turning most 16-bit scans white.
    ``I`` is usually a 16-bit PNG held in 32 bits; ``F`` is taken as [0, 1] when it fits there.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16"):
        values = values / 257.0
    elif image.mode == "I":
        values = np.clip(values, 0, 65535)
        if values.max(initial=0) > 255:
            values = values / 257.0
    elif image.mode == "F" and values.size and np.nanmax(values) <= 1.0:
        values = values * 255.0
    values = np.nan_to_num(values, nan=0.0)
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image; transparency is composited onto white (what a viewer shows)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_bit_depth_to_l(image)
    if image.mode == "La":  # premultiplied; Pillow only converts it to LA
        image = image.convert("LA")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        if has_alpha:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB") if image.mode != "RGB" else image.copy()
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"cannot convert an image in colour mode {image.mode!r} to RGB: {exc}") from exc


# --- the public entry points ----------------------------------------------------------------


def load_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO) -> Image.Image:
    """Any path / bytes / binary file / PIL image -> a fully decoded, upright, 8-bit RGB image.

    Raises ``ImageInputError`` for every kind of bad input. ``None`` disables a limit; Pillow's
    own decompression-bomb guard (about 179 Mpx) still applies to encoded data. An animated file
    gives its first frame (a PIL image, the frame it is on).
    """
    if isinstance(source, Image.Image):
        image, where = source, "image"
        _check_size(image.size, where, max_pixels, max_aspect_ratio)
        _decode(image, where)  # a lazily opened PIL image may still be truncated
        return to_rgb(_apply_exif_orientation(image))

    data, where = _read_source(source)
    with _open_header(data, where) as image:
        _check_size(image.size, where, max_pixels, max_aspect_ratio)
        _decode(image, where)
        return to_rgb(_apply_exif_orientation(image))  # a new image, independent of the file


def content_hash(image: Image.Image) -> str:
    """sha256 of the RGB pixels and size: equal pictures share ViT feature caches and storage.

    The canonical encoding (a versioned header with mode and size, then the raw RGB bytes) does
    not depend on the file format, compression or metadata the picture arrived with.
    """
    rgb = image if image.mode == "RGB" and "transparency" not in image.info else to_rgb(image)
    width, height = rgb.size
    digest = hashlib.sha256(f"seedx-image-v1 RGB {width}x{height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
