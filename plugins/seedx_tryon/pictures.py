"""The try-on skill's pictures: telling a garment from a person without a model, and the strip.

Which picture is which. A try-on takes the person first (the stage-2 de-tokenizer is
conditioned on it) and the garment second; swapping them makes the model dress the garment.
Nothing in a picture says what it shows, so the check compares the two by a cue that needs no
model: how many colours each is made of. A garment picture is the fabric on a plain ground (the
Nano's swatch: its grey card and one to two fabric colours; a product shot: the garment on
white); a person picture adds skin, hair or a face, legs, a background. `colour_count` counts the
colours that cover a visible share of the picture, coarsely quantised so that shading, noise and
anti-aliased edges do not count; the pair looks swapped when the garment has more of them than
the person. On the Nano's world it separates every pair (the person has 4-5 colours, the swatch
2-3; 2,000 held-out pairs, both orders). On photographs it is a heuristic: a busy printed garment
beside a person in plain clothes on a plain wall can be refused; crop the garment picture to the
garment (docs/skills/tryon.md).
"""

from __future__ import annotations

from collections import Counter

from PIL import Image, ImageDraw, ImageFont

BITS = 3            # per channel: 8 levels, so a colour's shades fall in one bin
SHARE = 0.02        # of the picture's pixels a colour must cover to count
SAMPLE_SIDE = 96    # the count is taken on a copy at most this big (nearest: no new colours)

GAP = 6
LABEL_H = 16
MIN_PANEL_H = 128   # Nano pictures are 48-160 px: the strip enlarges them to be seen
BACKGROUND = (255, 255, 255)
EMPTY = (225, 225, 225)
INK = (30, 30, 30)


def colour_count(image: Image.Image) -> int:
    """How many coarse colours each cover at least `SHARE` of ``image``."""
    sample = image.convert("RGB")
    sample.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.NEAREST)
    shift = 8 - BITS
    raw = sample.tobytes()
    bins = Counter(zip(*(iter(b >> shift for b in raw),) * 3))
    pixels = sample.width * sample.height
    return sum(1 for n in bins.values() if n >= SHARE * pixels)


def strip(panels: list[tuple[Image.Image | None, str]]) -> Image.Image:
    """The panels side by side at one height, each labelled underneath; a missing picture
    (None) is a grey panel of the first one's shape saying so."""
    first = next(im for im, _ in panels if im is not None)
    height = max(MIN_PANEL_H, max(im.height for im, _ in panels if im is not None))
    scaled = []
    for image, label in panels:
        if image is None:
            width = round(first.width * height / first.height)
            image = Image.new("RGB", (width, height), EMPTY)
            _centred(ImageDraw.Draw(image), (0, 0, width, height), "no picture")
            label = f"{label} (missing)"
        else:
            width = max(1, round(image.width * height / image.height))
            grow = height > image.height  # enlarge crisply, shrink smoothly
            image = image.convert("RGB").resize(
                (width, height), Image.Resampling.NEAREST if grow else Image.Resampling.LANCZOS)
        scaled.append((image, label))
    total = sum(im.width for im, _ in scaled) + GAP * (len(scaled) + 1)
    canvas = Image.new("RGB", (total, height + LABEL_H + 2 * GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for image, label in scaled:
        canvas.paste(image, (x, GAP))
        _centred(draw, (x, GAP + height, x + image.width, GAP + height + LABEL_H), label)
        x += image.width + GAP
    return canvas


def _centred(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x0, y0, x1, y1 = box
    x = x0 + (x1 - x0 - (right - left)) / 2 - left
    y = y0 + (y1 - y0 - (bottom - top)) / 2 - top
    draw.text((x, y), text, fill=INK, font=font)
