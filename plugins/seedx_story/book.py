"""The storybook: one HTML file a reader opens offline, anywhere, years later.

Self-contained on purpose: every picture is a ``data:image/png;base64`` URI and the style is
inline, so the page needs no folder beside it, no network and no script. The Nano's scenes are
48-160 px, so pictures are shown at a fixed width, enlarged without smoothing
(``image-rendering: pixelated``) so its shapes stay crisp. A step that drew nothing shows its
sentence beside a grey "no picture" box, and any step with warnings lists them under it: the
book says what went wrong instead of hiding the step.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html import escape

from PIL import Image

PICTURE_PX = 320   # the width every scene is shown at
TITLE = "Storybook"
STYLE = f"""
body {{ font-family: Georgia, serif; margin: 24px auto; max-width: {PICTURE_PX + 80}px;
       background: #fffdf8; color: #222; }}
figure {{ margin: 0 0 28px 0; }}
img, .no-picture {{ width: {PICTURE_PX}px; image-rendering: pixelated; display: block;
                    border: 1px solid #bbb; }}
.no-picture {{ height: {PICTURE_PX * 3 // 4}px; background: #e1e1e1; color: #555;
               display: flex; align-items: center; justify-content: center; }}
.sentence {{ font-size: 20px; margin: 0 0 8px 0; }}
.warnings {{ font-size: 13px; color: #a33; margin: 6px 0 0 0; }}
"""


@dataclass(frozen=True)
class Page:
    """One step as the book shows it: its sentence, the picture it drew (None: none)."""

    sentence: str
    picture: Image.Image | None
    warnings: tuple[str, ...] = ()


def data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(image: Image.Image, alt: str) -> str:
    height = round(PICTURE_PX * image.height / image.width)
    return (f'<img src="{data_uri(image)}" alt="{escape(alt)}" width="{PICTURE_PX}" '
            f'height="{height}">')


def storybook_html(first_scene: Image.Image, pages: list[Page], title: str = TITLE) -> str:
    """The whole book: the first scene, then each page's sentence over its picture."""
    parts = [f'<figure class="scene" id="scene-0">{_img(first_scene, "the first scene")}'
             "<figcaption>The first scene</figcaption></figure>"]
    for number, page in enumerate(pages, start=1):
        picture = (_img(page.picture, f"scene {number}") if page.picture is not None else
                   '<div class="no-picture">no picture</div>')
        sentence = escape(page.sentence) or "<em>(no sentence)</em>"
        warned = "".join(f"<li>{escape(w)}</li>" for w in page.warnings)
        parts.append(f'<figure class="step" id="step-{number}"><p class="sentence">{sentence}</p>'
                     f"{picture}" + (f'<ul class="warnings">{warned}</ul>' if warned else "")
                     + "</figure>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
