"""The procedural world SEED-X Nano learns from: shapes on a plain background, a person to dress.

A ``Scene`` is a light background with 1-3 non-overlapping filled shapes. Everything is in
pixels with half-open boxes ``(x0, y0, x1, y1)``: an object of ``size`` 10 whose box starts at
x0 = 3 covers the pixel columns 3..12. Objects are created with integer box corners (``cx`` and
``cy`` may end in .5), so a render covers exactly the object's box and the analyser can read it
back exactly. Rendering uses Pillow without anti-aliasing and is deterministic.

Positions ("left", "right", "top", "bottom", "center") are judged on the image's normalised
coordinates, so a wide 4:1 picture still has a top and a bottom. ``place`` and ``move`` put an
object at the canonical spot of a region (against the edge, centred on the other axis) or the
nearest free spot to it, so edits are learnable: the same request always lands in the same place.

Try-on uses a ``Person`` (head, shirt with sleeves, legs) whose shirt is a ``Garment`` (a palette
colour, solid, striped or dotted), and garment swatches. Layout pages (slides, posters) are a
``Page``: grey bars standing for text, and pictured objects.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from PIL import Image, ImageDraw

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

# Saturated and far apart in RGB and hue (red 0, orange 27, yellow 56, green 134, blue 227,
# purple 277 degrees); the backgrounds are light and unsaturated, so "saturated" means "object".
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 225, 30),
    "purple": (140, 60, 190),
    "orange": (240, 120, 20),
}
BACKGROUNDS: dict[str, RGB] = {
    "white": (255, 255, 255),
    "light grey": (225, 225, 225),
    "beige": (245, 238, 220),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")

MIN_SIZE_FRACTION, MAX_SIZE_FRACTION = 0.15, 0.45   # of the shorter image side
# An object is "center" when its centre is within this normalised distance of the middle.
CENTER_RADIUS = 1 / 6


def edge_margin(width: int, height: int) -> int:
    """Pixels kept free between an object and the image border."""
    return max(1, round(0.03 * min(width, height)))


def object_gap(width: int, height: int) -> int:
    """Pixels kept free between two objects' boxes (so they stay separate components)."""
    return max(3, round(0.08 * min(width, height)))


def size_range(width: int, height: int) -> tuple[int, int]:
    """Smallest and largest object size (side or diameter) allowed on this image."""
    short = min(width, height)
    return math.ceil(MIN_SIZE_FRACTION * short), math.floor(MAX_SIZE_FRACTION * short)


# --- shapes and scenes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    """A filled shape: ``size`` is the side of the square / the circle's diameter / the up-pointing
    triangle's base and height; ``cx``, ``cy`` its centre, all in pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: int

    @property
    def bbox(self) -> Box:
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.shape}"

    def at(self, x0: int, y0: int) -> "Obj":
        """The same object with its box's top-left corner at (x0, y0)."""
        return replace(self, cx=x0 + self.size / 2, cy=y0 + self.size / 2)


def draw_obj(draw: ImageDraw.ImageDraw, obj: Obj) -> None:
    """Draw ``obj`` aliased: its pixels are exactly the palette colour, within its box."""
    x0, y0 = round(obj.cx - obj.size / 2), round(obj.cy - obj.size / 2)
    x1, y1 = x0 + obj.size - 1, y0 + obj.size - 1        # inclusive pixel corners
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    objects: tuple[Obj, ...]

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        for obj in self.objects:
            draw_obj(draw, obj)
        return image

    def left_to_right(self) -> list[int]:
        """Object indices in reading order: by centre x, then centre y (captions use this)."""
        return sorted(range(len(self.objects)),
                      key=lambda i: (self.objects[i].cx, self.objects[i].cy))

    def index_of(self, colour: str, shape: str) -> int | None:
        for i, obj in enumerate(self.objects):
            if obj.colour == colour and obj.shape == shape:
                return i
        return None


def boxes_clash(a: Box, b: Box, gap: float) -> bool:
    """True when ``a`` and ``b`` come closer than ``gap`` pixels (on both axes)."""
    return (a[0] < b[2] + gap and b[0] < a[2] + gap and
            a[1] < b[3] + gap and b[1] < a[3] + gap)


def random_size(rng: random.Random, *, width: int | None = None, height: int | None = None,
                min_side: int = 48, max_side: int = 256, max_aspect: float = 4.0
                ) -> tuple[int, int]:
    """An image size with both sides in [min_side, max_side] and aspect ratio <= max_aspect.

    30 % of images are square; the rest have a log-uniform aspect ratio and a random orientation.
    A side that is given is kept and the other one is drawn to fit.
    """
    if width is not None and height is not None:
        return width, height
    if width is not None or height is not None:
        given = width if width is not None else height
        lo = max(min_side, math.ceil(given / max_aspect))
        hi = min(max_side, int(given * max_aspect))
        other = given if rng.random() < 0.3 else rng.randint(lo, max(lo, hi))
        return (given, other) if width is not None else (other, given)
    long = rng.randint(min_side, max_side)
    aspect_max = min(max_aspect, long / min_side)
    aspect = 1.0 if rng.random() < 0.3 or aspect_max <= 1 else \
        math.exp(rng.uniform(0.0, math.log(aspect_max)))
    short = min(long, max(min_side, round(long / aspect)))
    return (long, short) if rng.random() < 0.5 else (short, long)


def random_scene(rng: random.Random, *, n_objects: int | None = None, width: int | None = None,
                 height: int | None = None, min_side: int = 48, max_side: int = 256,
                 max_aspect: float = 4.0, background: str | None = None) -> Scene:
    """1-3 (or ``n_objects``) shapes with distinct (colour, shape) pairs, fully inside the image
    with an edge margin, and no two closer than ``object_gap``.

    When big objects do not fit, later attempts shrink the largest allowed size towards the
    smallest, so every request succeeds.
    """
    width, height = random_size(rng, width=width, height=height, min_side=min_side,
                                max_side=max_side, max_aspect=max_aspect)
    n = n_objects if n_objects is not None else rng.randint(1, 3)
    background = background if background is not None else rng.choice(list(BACKGROUNDS))
    lo, hi = size_range(width, height)
    margin, gap = edge_margin(width, height), object_gap(width, height)
    kinds = [(c, s) for c in COLOURS for s in SHAPES]
    for attempt in range(200):
        top = max(lo, round(hi - (hi - lo) * min(1.0, attempt / 100)))
        objects: list[Obj] = []
        for colour, shape in rng.sample(kinds, n):
            for _ in range(30):
                size = rng.randint(lo, top)
                x0 = rng.randint(margin, width - margin - size)
                y0 = rng.randint(margin, height - margin - size)
                obj = Obj(shape, colour, 0.0, 0.0, size).at(x0, y0)
                if not any(boxes_clash(obj.bbox, o.bbox, gap) for o in objects):
                    objects.append(obj)
                    break
            else:
                break
        if len(objects) == n:
            return Scene(width, height, background, tuple(objects))
    raise ValueError(f"cannot fit {n} objects on a {width}x{height} image")


# --- positions and edits ------------------------------------------------------------------------


def position_of_box(bbox: Box, width: float, height: float) -> str:
    """Which of POSITIONS best describes a box: "center" near the middle, else the dominant axis."""
    u = (bbox[0] + bbox[2]) / 2 / width - 0.5
    v = (bbox[1] + bbox[3]) / 2 / height - 0.5
    if max(abs(u), abs(v)) < CENTER_RADIUS:
        return "center"
    if abs(u) >= abs(v):
        return "left" if u < 0 else "right"
    return "top" if v < 0 else "bottom"


def position_of(obj: Obj, scene: Scene) -> str:
    return position_of_box(obj.bbox, scene.width, scene.height)


def _anchor(position: str, width: int, height: int, size: int) -> tuple[int, int]:
    """The canonical top-left corner for an object of ``size`` in a region."""
    margin = edge_margin(width, height)
    mid_x, mid_y = round((width - size) / 2), round((height - size) / 2)
    return {"left": (margin, mid_y), "right": (width - margin - size, mid_y),
            "top": (mid_x, margin), "bottom": (mid_x, height - margin - size),
            "center": (mid_x, mid_y)}[position]


def place_among(obj: Obj, position: str, width: int, height: int,
                others: tuple[Obj, ...] = ()) -> Obj | None:
    """``obj`` moved to ``position``: the canonical spot if free, else the free spot nearest to it
    that still reads as ``position``; None when there is none."""
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; expected one of {POSITIONS}")
    margin, gap = edge_margin(width, height), object_gap(width, height)
    ax, ay = _anchor(position, width, height, obj.size)
    step = max(1, min(width, height) // 16)
    xs = set(range(margin, width - margin - obj.size + 1, step)) | {ax}
    ys = set(range(margin, height - margin - obj.size + 1, step)) | {ay}
    candidates = sorted(((x, y) for x in xs for y in ys),
                        key=lambda p: ((p[0] - ax) ** 2 + (p[1] - ay) ** 2, p))
    for x0, y0 in candidates:
        moved = obj.at(x0, y0)
        if position_of_box(moved.bbox, width, height) != position:
            continue
        if not any(boxes_clash(moved.bbox, o.bbox, gap) for o in others):
            return moved
    return None


def place(scene: Scene, obj: Obj, position: str) -> Obj | None:
    """``obj`` moved to ``position`` in ``scene``, avoiding the scene's other objects.

    On an empty scene (or one where the region is free) this always succeeds; None only when
    the region has no free spot.
    """
    others = tuple(o for o in scene.objects if o != obj)
    return place_among(obj, position, scene.width, scene.height, others)


def recolor(scene: Scene, i: int, colour: str) -> Scene:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {tuple(COLOURS)}")
    objects = list(scene.objects)
    objects[i] = replace(objects[i], colour=colour)
    return replace(scene, objects=tuple(objects))


def remove(scene: Scene, i: int) -> Scene:
    return replace(scene, objects=scene.objects[:i] + scene.objects[i + 1:])


def move(scene: Scene, i: int, position: str) -> Scene | None:
    """``scene`` with object ``i`` moved to ``position``; None if it cannot go there without
    overlapping another object."""
    others = scene.objects[:i] + scene.objects[i + 1:]
    moved = place_among(scene.objects[i], position, scene.width, scene.height, others)
    if moved is None:
        return None
    return replace(scene, objects=scene.objects[:i] + (moved,) + scene.objects[i + 1:])


@dataclass(frozen=True)
class Edit:
    """One edit of one object: ``kind`` is "recolor" (needs ``colour``), "remove" or "move"
    (needs ``position``); ``index`` is the object's index in the source scene."""

    kind: str
    index: int
    colour: str | None = None
    position: str | None = None

    def apply(self, scene: Scene) -> Scene | None:
        if self.kind == "recolor":
            return recolor(scene, self.index, self.colour)
        if self.kind == "remove":
            return remove(scene, self.index)
        if self.kind == "move":
            return move(scene, self.index, self.position)
        raise ValueError(f"unknown edit kind {self.kind!r}")


# --- try-on ---------------------------------------------------------------------------------------

PATTERNS = ("solid", "striped", "dotted")
PATTERN_LIGHT: RGB = (255, 255, 255)      # the stripes and dots between the garment colour
SWATCH_BACKGROUND: RGB = (200, 200, 200)
SKINS: dict[str, RGB] = {"pale": (245, 215, 190), "tan": (215, 170, 130),
                         "brown": (150, 105, 75), "dark": (95, 65, 50)}
LEG_COLOURS: dict[str, RGB] = {"black": (35, 35, 40), "dark grey": (85, 85, 90),
                               "navy": (35, 40, 90), "brown": (100, 70, 45)}


def pattern_period(region_w: int, region_h: int) -> int:
    """Stripe / dot spacing for a patterned region: about five repeats, at least 4 pixels."""
    return max(4, round(min(region_w, region_h) / 5))


def fill_pattern(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour: str,
                 pattern: str) -> None:
    """Fill the half-open integer ``box`` with a garment: solid colour, horizontal stripes, or
    a grid of light dots."""
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        return
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=COLOURS[colour])
    period = pattern_period(x1 - x0, y1 - y0)
    if pattern == "striped":
        light = period // 2
        for y in range(y0 + period - light, y1, period):
            draw.rectangle([x0, y, x1 - 1, min(y1, y + light) - 1], fill=PATTERN_LIGHT)
    elif pattern == "dotted":
        dot = max(2, period // 2)
        for y in range(y0 + (period - dot) // 2, y1 - dot + 1, period):
            for x in range(x0 + (period - dot) // 2, x1 - dot + 1, period):
                draw.ellipse([x, y, x + dot - 1, y + dot - 1], fill=PATTERN_LIGHT)
    elif pattern != "solid":
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {PATTERNS}")


@dataclass(frozen=True)
class Garment:
    colour: str
    pattern: str = "solid"

    @property
    def phrase(self) -> str:
        return f"{self.pattern} {self.colour} shirt"

    def render(self, size: int | tuple[int, int] = 64) -> Image.Image:
        """A swatch: the fabric filling the middle of a grey square (or ``(w, h)``) card."""
        w, h = (size, size) if isinstance(size, int) else size
        image = Image.new("RGB", (w, h), SWATCH_BACKGROUND)
        mx, my = round(0.12 * w), round(0.12 * h)
        fill_pattern(ImageDraw.Draw(image), (mx, my, w - mx, h - my), self.colour, self.pattern)
        return image


def swatch_region(width: int, height: int) -> tuple[int, int, int, int]:
    mx, my = round(0.12 * width), round(0.12 * height)
    return (mx, my, width - mx, height - my)


def person_layout(width: int, height: int) -> dict[str, tuple[int, int, int, int]]:
    """Integer half-open boxes of the figure's parts, as fractions of the image."""
    def box(fx0: float, fy0: float, fx1: float, fy1: float) -> tuple[int, int, int, int]:
        return (round(fx0 * width), round(fy0 * height), round(fx1 * width), round(fy1 * height))
    r = min(0.12 * height, 0.2 * width)
    cx, cy = width / 2, 0.16 * height
    head = (round(cx - r), round(cy - r), round(cx + r), round(cy + r))
    return {"head": head, "torso": box(0.28, 0.30, 0.72, 0.62),
            "left_sleeve": box(0.16, 0.30, 0.28, 0.48), "right_sleeve": box(0.72, 0.30, 0.84, 0.48),
            "left_leg": box(0.32, 0.62, 0.48, 0.95), "right_leg": box(0.52, 0.62, 0.68, 0.95)}


@dataclass(frozen=True)
class Person:
    width: int
    height: int
    background: str
    skin: str
    shirt: Garment
    legs_colour: str

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        parts = person_layout(self.width, self.height)
        x0, y0, x1, y1 = parts["head"]
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=SKINS[self.skin])
        for name in ("left_leg", "right_leg"):
            x0, y0, x1, y1 = parts[name]
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=LEG_COLOURS[self.legs_colour])
        for name in ("torso", "left_sleeve", "right_sleeve"):
            fill_pattern(draw, parts[name], self.shirt.colour, self.shirt.pattern)
        return image


def shirt_region(person: Person) -> tuple[int, int, int, int]:
    """The box holding the shirt (torso and sleeves): all that try-on may change."""
    parts = person_layout(person.width, person.height)
    return (parts["left_sleeve"][0], parts["torso"][1], parts["right_sleeve"][2], parts["torso"][3])


def dress(person: Person, garment: Garment) -> Person:
    return replace(person, shirt=garment)


def random_garment(rng: random.Random) -> Garment:
    return Garment(rng.choice(list(COLOURS)), rng.choice(PATTERNS))


def random_person(rng: random.Random, *, width: int | None = None,
                  height: int | None = None) -> Person:
    """A standing figure on a portrait-ish image (height 64-160 px, width 0.6-1.0 of it)."""
    if height is None:
        height = rng.randint(64, 160)
    if width is None:
        width = max(48, round(height * rng.uniform(0.6, 1.0)))
    return Person(width, height, rng.choice(list(BACKGROUNDS)), rng.choice(list(SKINS)),
                  random_garment(rng), rng.choice(list(LEG_COLOURS)))


# --- layout pages (slides, posters) ---------------------------------------------------------------

TITLE_INK: RGB = (60, 60, 60)
TEXT_INK: RGB = (150, 150, 150)


@dataclass(frozen=True)
class Page:
    """A designed canvas: a dark title bar, grey bullet lines (one per text line, inside
    ``text_box``) and pictured objects. Bars are unsaturated, so the analyser sees only objects."""

    width: int
    height: int
    background: str
    title_box: tuple[int, int, int, int]
    text_box: tuple[int, int, int, int] | None = None
    n_lines: int = 0
    objects: tuple[Obj, ...] = field(default=())

    def render(self) -> Image.Image:
        image = Image.new("RGB", (self.width, self.height), BACKGROUNDS[self.background])
        draw = ImageDraw.Draw(image)
        x0, y0, x1, y1 = self.title_box
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=TITLE_INK)
        if self.text_box is not None and self.n_lines:
            x0, y0, x1, y1 = self.text_box
            pitch = (y1 - y0) / self.n_lines
            thick = max(1, round(pitch * 0.4))
            for k in range(self.n_lines):
                top = round(y0 + k * pitch + (pitch - thick) / 2)
                draw.rectangle([x0, top, x0 + thick - 1, top + thick - 1], fill=TITLE_INK)
                draw.rectangle([x0 + 2 * thick, top, x1 - 1, top + thick - 1], fill=TEXT_INK)
        for obj in self.objects:
            draw_obj(draw, obj)
        return image
