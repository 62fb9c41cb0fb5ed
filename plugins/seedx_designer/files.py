"""Writing the designer's files: PNGs that carry their provenance, the before | after picture,
and the notes a person reads.

Every file is written atomically (`seedx_agent.atomic_write`), so a reader never sees half of
one. A PNG keeps its provenance as JSON in a ``seedx:provenance`` text chunk, the same record
as in the action's JSON, so a picture that leaves its folder still says how it was made.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from seedx_agent import Provenance, atomic_write

GAP, LABEL_H, MIN_PANEL_H = 6, 16, 128  # Nano pictures are small: panels are enlarged to be seen
BACKGROUND, EMPTY, INK = (255, 255, 255), (225, 225, 225), (30, 30, 30)






def save_text(text: str, path: Path) -> Path:
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return path


def before_after(before: Image.Image | None, after: Image.Image | None) -> Image.Image:
    """``before`` | ``after`` at one height (at least `MIN_PANEL_H`), labelled underneath; a
    missing picture is a grey panel of the other one's shape saying so."""
    present = [im for im in (before, after) if im is not None]
    shape = present[0].size if present else (MIN_PANEL_H, MIN_PANEL_H)
    height = max([MIN_PANEL_H] + [im.height for im in present])
    panels = []
    for image, label in ((before, "before"), (after, "after")):
        if image is None:
            width = round(shape[0] * height / shape[1])
            image = Image.new("RGB", (width, height), EMPTY)
            _centred(ImageDraw.Draw(image), (0, 0, width, height), "no picture")
            label += " (missing)"
        else:
            width = max(1, round(image.width * height / image.height))
            grow = height > image.height  # enlarge crisply, shrink smoothly
            image = image.convert("RGB").resize(
                (width, height), Image.Resampling.NEAREST if grow else Image.Resampling.LANCZOS)
        panels.append((image, label))
    canvas = Image.new("RGB", (sum(im.width for im, _ in panels) + 3 * GAP,
                               height + LABEL_H + 2 * GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x = GAP
    for image, label in panels:
        canvas.paste(image, (x, GAP))
        _centred(draw, (x, GAP + height, x + image.width, GAP + height + LABEL_H), label)
        x += image.width + GAP
    return canvas


def how_made(provenance: Provenance | None) -> list[str]:
    """Markdown lines saying how a picture was drawn (its provenance, in words)."""
    if provenance is None:
        return ["No picture was drawn."]
    p = provenance
    lines = [f"- model `{p.model}`, variant `{p.variant}`, de-tokenizer stage "
             f"{p.detokenizer_stage}",
             f"- seed {p.seed}, {p.num_inference_steps} steps, guidance {p.guidance_scale}"
             + (f", image guidance {p.image_guidance_scale}"
                if p.image_guidance_scale is not None else "")
             + (f", {p.scheduler}" if p.scheduler else "")]
    if p.parents:
        lines.append("- drawn from " + ", ".join(f"`{i[:12]}`" for i in p.parents))
    return lines


def _centred(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str) -> None:
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x0, y0, x1, y1 = box
    draw.text((x0 + (x1 - x0 - (right - left)) / 2 - left,
               y0 + (y1 - y0 - (bottom - top)) / 2 - top), text, fill=INK, font=font)
