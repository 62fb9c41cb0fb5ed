"""``DIR/index.html``: the run of ``seedx run`` as one page a person can look at.

``transcript.json`` is for programs; this page is for the newcomer who just ran the demo: every
turn's request, the pictures the model was shown, the reply, the boxes drawn on the picture they
belong to, and the pictures it made with how they were made. It is built from the transcript
alone (plain HTML, no script, pictures by relative path), so it opens from disk in any browser
and can be zipped with the run.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from core_models.files import atomic_write

SCALE = 3          # small pictures (the Nano's are 64 px) are shown enlarged, without smoothing
MAX_SIDE = 384     # ...but no picture is shown wider or taller than this

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
.turn { border-top: 1px solid #ccc; padding: 1em 0; }
.request { font-weight: 600; }
.reply { white-space: pre-wrap; background: #f5f5f5; padding: .5em; border-radius: 4px; }
.pictures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: .5em 0; }
figure { margin: 0; }
figcaption { font-size: .8em; color: #555; max-width: 24em; }
.picture { position: relative; display: inline-block; }
.picture img { image-rendering: pixelated; display: block; }
.box { position: absolute; border: 2px solid #e00; box-sizing: border-box; }
.box span { position: absolute; top: -1.4em; left: 0; font-size: .75em; background: #e00;
            color: #fff; padding: 0 .3em; white-space: nowrap; }
.error { color: #b00; }
.notice { background: #fff4d6; padding: .5em; border-radius: 4px; }
"""


def write_report_page(out: Path, transcript: dict[str, Any]) -> Path:
    """Write ``out/index.html`` from ``transcript`` (what `write_transcript` wrote)."""
    sizes = _image_sizes(out, transcript)
    title = transcript.get("script", {}).get("title") or "seedx run"
    runtime = transcript.get("runtime", {})
    body = [f"<h1>{_e(title)}</h1>",
            f"<p>model <b>{_e(runtime.get('model', ''))}</b>, "
            f"{len(transcript.get('turns', []))} turns in {transcript.get('seconds', 0):.1f} s; "
            "every record is in <a href='transcript.json'>transcript.json</a>.</p>"]
    if transcript.get("notice"):
        body.append(f"<p class='notice'>{_e(transcript['notice'])}</p>")
    for n, turn in enumerate(transcript.get("turns", [])):
        body.append(_turn(n, turn, sizes))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n")
    path = out / "index.html"
    with atomic_write(path) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return path


def _turn(n: int, turn: dict[str, Any], sizes: dict[str, tuple[int, int]]) -> str:
    request = turn.get("request", {})
    options = {k: v for k, v in request.items() if k not in ("text", "images") and v not in (None, False)}
    parts = turn.get("parts", [])
    boxes: dict[str, list[dict]] = {}
    for part in parts:
        if part.get("type") == "box" and part.get("target_image") and part.get("pixel_xyxy"):
            boxes.setdefault(part["target_image"], []).append(part)
    made = [p for p in parts if p.get("type") == "image" and p.get("role") != "input"]
    shown = list(turn.get("model_images", []))
    # a box on a picture of an earlier turn (a follow-up question): show that picture too
    shown += [i for i in boxes if i not in shown and i not in {p["image_id"] for p in made}]
    html_parts = [f"<div class='turn'><p class='request'>{n + 1}. {_e(request.get('text', ''))}</p>"]
    if options:
        html_parts.append("<p><small>" + ", ".join(f"{_e(k)}={_e(v)}" for k, v in options.items())
                          + f" &middot; variant {_e(turn.get('variant'))}</small></p>")
    if shown:
        html_parts.append("<div class='pictures'>" + "".join(
            _picture(i, sizes, boxes.get(i, []), "shown to the model") for i in shown) + "</div>")
    html_parts.append(f"<p class='reply'>{_e(_readable(turn.get('text', '')))}</p>")
    if made:
        html_parts.append("<div class='pictures'>" + "".join(
            _picture(p["image_id"], sizes, boxes.get(p["image_id"], []), _provenance(p))
            for p in made) + "</div>")
    for action in turn.get("actions", []):
        name = "/".join(str(action[k]) for k in ("skill", "action") if action.get(k))
        html_parts.append(f"<p><small>action: {_e(action.get('summary') or name)}</small></p>")
    for error in turn.get("errors", []):
        html_parts.append(f"<p class='error'>{_e(error.get('source'))}: {_e(error.get('message'))}</p>")
    html_parts.append("</div>")
    return "".join(html_parts)


def _picture(image_id: str, sizes: dict[str, tuple[int, int]], boxes: list[dict], caption: str) -> str:
    w, h = sizes.get(image_id, (64, 64))
    scale = max(1.0, min(SCALE, MAX_SIDE / max(w, h)))
    marks = []
    for box in boxes:
        x0, y0, x1, y1 = box["pixel_xyxy"]
        marks.append(f"<div class='box' style='left:{x0 * scale:.0f}px;top:{y0 * scale:.0f}px;"
                     f"width:{(x1 - x0) * scale:.0f}px;height:{(y1 - y0) * scale:.0f}px'>"
                     f"<span>{_e(box.get('phrase') or 'box')}</span></div>")
    return (f"<figure><div class='picture'><img src='images/{_e(image_id)}.png' "
            f"width='{w * scale:.0f}' height='{h * scale:.0f}' alt=''>{''.join(marks)}</div>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _provenance(part: dict[str, Any]) -> str:
    p = part.get("provenance") or {}
    keys = ("variant", "seed", "num_inference_steps", "guidance_scale", "image_guidance_scale")
    made = ", ".join(f"{k} {p[k]}" for k in keys if p.get(k) is not None)
    return f"{part.get('role', 'picture')}: {made}" if made else str(part.get("role", "picture"))


def _readable(text: str) -> str:
    """Reply text with SEED-X's box and image runs shortened to what they mean."""
    text = re.sub(r"<box_start>((?:\s*<loc-\d+>\s*)+)<box_end>",
                  lambda m: "[box " + " ".join(re.findall(r"\d+", m.group(1))) + "]", text)
    return re.sub(r"<img>.*?</img>", "[picture]", text, flags=re.DOTALL)


def _image_sizes(out: Path, transcript: dict[str, Any]) -> dict[str, tuple[int, int]]:
    from PIL import Image

    sizes = {}
    for turn in transcript.get("turns", []):
        for image in turn.get("images", []) + [{"image_id": i} for i in turn.get("model_images", [])]:
            path = out / "images" / f"{image['image_id']}.png"
            if image["image_id"] not in sizes and path.is_file():
                with Image.open(path) as picture:
                    sizes[image["image_id"]] = picture.size
    return sizes


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)
