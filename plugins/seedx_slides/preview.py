"""A PNG of each slide, drawn with PIL from the same plan and the same geometry as the deck.

A preview is what the slide shows, not a rendering of the ``.pptx`` (that would need
LibreOffice): the title and bullets word-wrapped in their regions, the picture fitted and
centred in its region, and an empty picture region as a grey box saying so. The fonts are
PIL's default, so text may wrap differently than in PowerPoint; positions are exact.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .geometry import SLIDE_SIZES, fit_centred, region_rect
from .plan import SlidePlan

PREVIEW_WIDTH = 960
BACKGROUND = (255, 255, 255)
INK = (25, 25, 25)
EMPTY = (225, 225, 225)


def preview_size(aspect: str) -> tuple[int, int]:
    width, height = SLIDE_SIZES[aspect]
    return PREVIEW_WIDTH, round(PREVIEW_WIDTH * height / width)


def draw_preview(plan: SlidePlan, aspect: str) -> Image.Image:
    size = preview_size(aspect)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    rects = {name: region_rect(region.box, *size) for name, region in plan.slide.regions.items()}
    title = rects["title"]
    _write(draw, title, [plan.slide.title], font_px=max(14, min(40, title[3] * 0.6)), bold=True)
    bullets = list(plan.slide.bullets)
    text = rects["text"]
    _write(draw, text, bullets, font_px=max(10, min(24, text[3] / max(1, len(bullets)) * 0.45)),
           bullet=True)
    left, top, width, height = rects["picture"]
    if plan.picture is None:
        draw.rectangle([left, top, left + width - 1, top + height - 1], fill=EMPTY)
        _write(draw, rects["picture"], ["no picture"], font_px=14)
    else:
        x, y, w, h = fit_centred(rects["picture"], plan.picture.size)
        grow = w > plan.picture.width
        shown = plan.picture.convert("RGBA").resize(
            (w, h), Image.Resampling.NEAREST if grow else Image.Resampling.LANCZOS)
        canvas.paste(shown, (x, y), shown)
    return canvas


def _write(draw: ImageDraw.ImageDraw, rect, lines: list[str], *, font_px: float,
           bold: bool = False, bullet: bool = False) -> None:
    """``lines`` word-wrapped to the region's width, top down, clipped at its bottom; a
    bullet is a drawn dot (PIL's default font has no bullet glyph), its rows indented."""
    font = ImageFont.load_default(size=round(font_px))
    left, top, width, height = rect
    indent = round(font_px) if bullet else 0
    y = top
    for line in lines:
        for k, row in enumerate(_wrap(draw, line, font, width - indent)):
            if y + font_px > top + height + font_px * 0.5:
                return
            if bullet and k == 0:
                r, cy = font_px * 0.18, y + font_px * 0.55
                draw.ellipse([left + r, cy - r, left + 3 * r, cy + r], fill=INK)
            draw.text((left + indent, y), row, fill=INK, font=font,
                      stroke_width=1 if bold else 0, stroke_fill=INK)
            y += round(font_px * 1.25)


def _wrap(draw, line: str, font, width: int) -> list[str]:
    rows, row = [], ""
    for word in line.split():
        candidate = f"{row} {word}".strip()
        if row and draw.textlength(candidate, font=font) > width:
            rows.append(row)
            row = word
        else:
            row = candidate
    return rows + [row] if row else rows
