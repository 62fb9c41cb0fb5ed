"""The ``.pptx``: one blank-layout slide per plan, each region a real shape at its EMUs.

Blank layouts with text boxes, not the template's placeholders, because the model chose where
the title and the text go and the placeholders would put them where the template says. The
shapes are named ``title``, ``text`` and ``picture`` so a reader (or a test) finds them by role.
Bullets are real paragraph bullets (``a:buChar``), one paragraph per bullet, so PowerPoint
indents and wraps them as bullets rather than as text that starts with a dot.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

from pptx import Presentation
from pptx.enum.text import MSO_AUTO_SIZE
from pptx.oxml.ns import qn
from pptx.util import Emu, Pt

from seedx_agent import atomic_write

from .geometry import SLIDE_SIZES, fit_centred, region_rect
from .plan import SlidePlan

BLANK_LAYOUT = 6          # of python-pptx's default template
EMU_PER_PT = 12700
MIN_PICTURE_SIDE = 256    # a cut from a small drawing is enlarged by a whole factor, crisply
MAX_PROPERTY_CHARS = 255  # the OOXML core properties' limit (python-pptx enforces it)
# What XML 1.0 cannot hold: control characters other than tab, newline and carriage return,
# lone surrogates and the two non-characters. The words are the model's: anything may be in them.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def build_deck(plans: list[SlidePlan], aspect: str) -> tuple[Presentation, list[dict]]:
    """The presentation, and for each slide the EMU rectangles of its shapes."""
    width, height = SLIDE_SIZES[aspect]
    deck = Presentation()
    deck.slide_width, deck.slide_height = Emu(width), Emu(height)
    placed = []
    for plan in plans:
        page = deck.slides.add_slide(deck.slide_layouts[BLANK_LAYOUT])
        rects = {name: region_rect(region.box, width, height)
                 for name, region in plan.slide.regions.items()}
        _text_box(page, "title", rects["title"], [xml_text(plan.slide.title)], bullets=False)
        _text_box(page, "text", rects["text"], [xml_text(b) for b in plan.slide.bullets],
                  bullets=True)
        shapes = {name: list(rect) for name, rect in rects.items()}
        if plan.picture is not None:
            at = fit_centred(rects["picture"], plan.picture.size)
            picture = page.shapes.add_picture(_png(plan.picture), *(Emu(v) for v in at))
            picture.name = "picture"
            shapes["picture_placed"] = list(at)
        placed.append(shapes)
    if plans:  # the document's title, as file browsers show it; the slide keeps the whole one
        deck.core_properties.title = xml_text(plans[0].slide.title)[:MAX_PROPERTY_CHARS]
    return deck, placed


def xml_text(text: str) -> str:
    """``text`` without the characters a ``.pptx`` (XML) cannot store."""
    return _NOT_XML.sub("", text)


def save_deck(deck: Presentation, path: Path) -> None:
    with atomic_write(path) as tmp:  # a reader never opens half a deck
        with open(tmp, "wb") as f:
            deck.save(f)


def _text_box(page, name: str, rect, lines: list[str], *, bullets: bool) -> None:
    box = page.shapes.add_textbox(*(Emu(v) for v in rect))
    box.name = name
    frame = box.text_frame
    frame.word_wrap = True
    frame.auto_size = MSO_AUTO_SIZE.TEXT_TO_FIT_SHAPE  # PowerPoint shrinks what overflows
    size = _font_size(rect[3], max(1, len(lines)), title=not bullets)
    for i, line in enumerate(lines or [""]):
        paragraph = frame.paragraphs[0] if i == 0 else frame.add_paragraph()
        paragraph.text = line
        paragraph.font.size = Pt(size)
        paragraph.font.bold = not bullets
        if bullets and line:
            p_pr = paragraph._p.get_or_add_pPr()
            p_pr.set("marL", str(Pt(size)))
            p_pr.set("indent", str(-Pt(size)))
            p_pr.append(p_pr.makeelement(qn("a:buChar"), {"char": "•"}))


def _font_size(height_emu: int, lines: int, *, title: bool) -> int:
    """A size that lets ``lines`` lines fill the region's height, within readable bounds."""
    per_line = height_emu / EMU_PER_PT / lines
    low, high = (18, 44) if title else (10, 28)
    return int(min(max(per_line * 0.6, low), high))


def _png(image) -> io.BytesIO:
    factor = max(1, math.ceil(MIN_PICTURE_SIDE / max(image.size)))
    if factor > 1:  # integer scaling keeps the aspect ratio exactly
        image = image.resize((image.width * factor, image.height * factor),
                             resample=0)  # nearest: no invented detail
    data = io.BytesIO()
    image.save(data, format="PNG")
    data.seek(0)
    return data
