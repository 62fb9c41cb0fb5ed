"""Safe image input: every bad input is one clear ImageInputError; every odd mode becomes RGB."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from core_models.image_io import ImageInputError, content_hash, load_image
from helpers import synthetic_image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that *declares* width x height but carries almost no data: a bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


# --- the accepted sources -------------------------------------------------------------------


def test_path_bytes_file_and_pil_give_the_same_pixels(tmp_path):
    original = synthetic_image(40, 30)
    data = encode(original, "PNG")
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    loaded = [load_image(path), load_image(str(path)), load_image(data), load_image(bytearray(data)),
              load_image(io.BytesIO(data)), load_image(original)]
    for image in loaded:
        assert image.mode == "RGB" and image.size == (40, 30)
        assert np.array_equal(np.asarray(image), np.asarray(original))
    with path.open("rb") as handle:
        assert np.array_equal(np.asarray(load_image(handle)), np.asarray(original))
    assert load_image(original) is not original  # never hands back (or mutates) the caller's object


def test_the_one_by_thousand_strip_is_allowed_when_the_limit_allows_it():
    strip = Image.new("RGB", (1, 1000))
    with pytest.raises(ImageInputError, match="aspect ratio of 1000.0:1"):
        load_image(strip)
    assert load_image(strip, max_aspect_ratio=None).size == (1, 1000)
    assert load_image(strip, max_aspect_ratio=1000).size == (1, 1000)
    assert load_image(Image.new("RGB", (500, 10))).size == (500, 10)  # exactly 50:1 passes


# --- bad input ------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageInputError, match="not found") as info:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(ImageInputError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("data", [b"", b"hello, this is text, not a picture", b"\x89PNG\r\n\x1a\n"])
def test_not_an_image(data, tmp_path):
    with pytest.raises(ImageInputError, match="empty|not a recognised image|corrupt") as info:
        load_image(data)
    assert "PNG" in str(info.value) or "empty" in str(info.value) or "corrupt" in str(info.value)
    path = tmp_path / "fake.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageInputError, match="fake.jpg"):
        load_image(path)


def test_unsupported_decoder_is_refused():
    data = encode(Image.new("RGB", (8, 8)), "PCX")  # Pillow could read it; we do not trust it
    with pytest.raises(ImageInputError, match="not a recognised image"):
        load_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated(fmt):
    data = encode(synthetic_image(120, 90), fmt)
    with pytest.raises(ImageInputError, match="truncated") as info:
        load_image(data[: len(data) // 2])
    assert "image data" in str(info.value)


def test_truncated_lazy_pil_image():
    data = encode(synthetic_image(120, 90), "JPEG")
    lazy = Image.open(io.BytesIO(data[: len(data) // 2]))  # header fine, pixels cut off
    with pytest.raises(ImageInputError, match="truncated"):
        load_image(lazy)


def test_garbage_after_a_valid_header_is_corrupt():
    data = encode(synthetic_image(64, 64), "PNG")
    broken = data[:60] + bytes(range(256)) * 4
    with pytest.raises(ImageInputError, match="truncated|corrupt"):
        load_image(broken)


def test_too_many_pixels_is_refused_from_the_header():
    # 9000x8000 = 72 Mpx with 16 pixels of data: the header check must fire before decoding
    # (a decode would report truncation instead).
    with pytest.raises(ImageInputError, match="72,000,000 pixels.*max_pixels"):
        load_image(png_header_only(9000, 8000))
    with pytest.raises(ImageInputError, match="more than the limit of 5,000"):
        load_image(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5_000)
    with pytest.raises(ImageInputError, match="more than the limit"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5_000)


def test_pillow_bomb_guard_becomes_our_error():
    with pytest.raises(ImageInputError, match="too many pixels"):
        load_image(png_header_only(20000, 20000), max_pixels=None)


def test_zero_size():
    with pytest.raises(ImageInputError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))


def test_wrong_types_and_text_mode(tmp_path):
    with pytest.raises(ImageInputError, match="cannot load an image from a int"):
        load_image(42)
    path = tmp_path / "p.png"
    path.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    with path.open("r", encoding="latin-1") as handle, pytest.raises(ImageInputError, match="'rb'"):
        load_image(handle)


def test_errors_are_value_errors():
    assert issubclass(ImageInputError, ValueError)


# --- colour modes and orientation -----------------------------------------------------------


def test_rgba_is_composited_onto_white():
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    for source in (rgba, encode(rgba, "PNG"), encode(rgba, "WEBP", lossless=True)):
        out = load_image(source)
        assert out.mode == "RGB"
        assert out.getpixel((0, 0)) == (255, 255, 255)
        assert out.getpixel((1, 0)) == (255, 0, 0)
        assert out.getpixel((2, 0)) == pytest.approx((127, 127, 127), abs=1)


def test_la_and_palette_transparency():
    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 255))
    assert list(load_image(la).get_flattened_data()) == [(255, 255, 255), (0, 0, 0)]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 10, 200, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    out = load_image(encode(palette, "PNG"))
    assert list(out.get_flattened_data()) == [(255, 255, 255), (10, 200, 10)]
    palette.info.pop("transparency")
    assert list(load_image(encode(palette, "GIF")).get_flattened_data()) == [(0, 0, 255), (10, 200, 10)]


def test_greyscale_and_binary():
    assert load_image(Image.new("L", (3, 3), 77)).getpixel((0, 0)) == (77, 77, 77)
    assert load_image(Image.new("1", (3, 3), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk():
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red ink-wise
    for source in (cmyk, encode(cmyk, "JPEG", quality=100), encode(cmyk, "TIFF")):
        r, g, b = load_image(source).getpixel((1, 1))
        assert r > 240 and g < 15 and b < 15


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    for source in (image, encode(image, "PNG")):
        out = load_image(source)
        assert [p[0] for p in out.get_flattened_data()] == [0, 100, 255]
    as_i = Image.fromarray(values.astype(np.int32))
    assert [p[0] for p in load_image(as_i).get_flattened_data()] == [0, 100, 255]
    as_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [p[0] for p in load_image(as_f).get_flattened_data()] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["La", "RGBa", "PA", "RGBX", "YCbCr", "LAB", "HSV", "I;16B", "I;16L"])
def test_every_other_mode_converts(mode):
    out = load_image(Image.new(mode, (3, 2)))
    assert out.mode == "RGB" and out.size == (3, 2)


def test_unconvertible_mode_is_an_input_error(monkeypatch):
    """Pillow converts every mode it has today; a future mode it cannot convert must not crash."""
    original = Image.Image.convert

    def convert(self, mode=None, *args, **kwargs):
        if self.mode == "LAB":
            raise ValueError("conversion from LAB to RGB not supported")
        return original(self, mode, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "convert", convert)
    with pytest.raises(ImageInputError, match="colour mode 'LAB'"):
        load_image(Image.new("LAB", (2, 2)))


def test_exif_orientation_is_applied():
    stored = synthetic_image(40, 20)  # stored landscape, tagged "rotate 90 CW to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    out = load_image(data)
    assert out.size == (20, 40)
    as_stored = Image.open(io.BytesIO(data)).convert("RGB")  # same JPEG pixels, not rotated
    assert np.array_equal(np.asarray(out), np.asarray(as_stored.transpose(Image.Transpose.ROTATE_270)))
    assert load_image(encode(stored, "JPEG", quality=95)).size == (40, 20)


# --- content hash ---------------------------------------------------------------------------


def test_content_hash_is_stable_and_sensitive():
    image = synthetic_image(32, 24)
    digest = content_hash(image)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert content_hash(synthetic_image(32, 24)) == digest
    assert content_hash(load_image(encode(image, "PNG"))) == digest  # format-independent
    assert content_hash(load_image(encode(image, "TIFF"))) == digest
    changed = image.copy()
    changed.putpixel((5, 5), tuple((v + 1) % 256 for v in image.getpixel((5, 5))))
    assert content_hash(changed) != digest
    assert content_hash(synthetic_image(32, 24, seed=1)) != digest
    # Same bytes, different shape: the size is part of the hash.
    flat = np.asarray(image).reshape(24 * 32 // 16, 16, 3)
    assert content_hash(Image.fromarray(np.ascontiguousarray(flat))) != digest


def test_content_hash_of_other_modes_matches_the_loaded_rgb():
    rgba = Image.new("RGBA", (3, 3), (10, 20, 30, 100))
    assert content_hash(rgba) == content_hash(load_image(rgba))
    grey = Image.new("L", (3, 3), 9)
    assert content_hash(grey) == content_hash(Image.new("RGB", (3, 3), (9, 9, 9)))
