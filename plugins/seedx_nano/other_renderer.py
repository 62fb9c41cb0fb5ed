"""A second way to draw the world's scenes, never used in training: the eval's robustness column.

A model that only ever saw `world.Scene.render` (aliased edges, exact palette colours, upright
triangles, flat backgrounds) could learn those pixels instead of shapes and colours. This renderer
keeps the world's definition (the same objects, colour names, sizes, boxes and backgrounds by
name) and changes everything a drawing of it may change:

* edges anti-aliased (drawn at 4x and reduced with a box filter);
* each object's colour a different shade of its name (hue within +-6 degrees, saturation and
  value within -12 %..+5 %), which `analyser.nearest_colour` still names the same;
* triangles turned by up to +-15 degrees about their centre and shrunk to stay inside their box;
* the background its named colour shifted by a few levels, with a faint top-to-bottom gradient.

Everything is drawn from ``random.Random(seed)``, so a scene and a seed give the same picture.
Nothing in ``seedx_nano.train`` imports this module (a test checks it).
"""

from __future__ import annotations

import colorsys
import math
import random

import numpy as np
from PIL import Image, ImageDraw

from .world import BACKGROUNDS, COLOURS, Obj, Scene

SUPERSAMPLE = 4
MAX_TURN_DEGREES = 15.0


def shade(rgb: tuple[int, int, int], rng: random.Random) -> tuple[int, int, int]:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-6, 6) / 360) % 1.0
    s = min(1.0, s * rng.uniform(0.88, 1.05))
    v = min(1.0, v * rng.uniform(0.88, 1.05))
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))


def background(scene: Scene, rng: random.Random) -> Image.Image:
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    base = np.clip(base + [rng.uniform(-8, 0) for _ in range(3)], 0, 255)
    ramp = np.linspace(0.0, rng.uniform(-10, 0), scene.height, dtype=np.float32)[:, None, None]
    pixels = np.clip(base[None, None, :] + ramp, 0, 255)
    pixels = np.broadcast_to(pixels, (scene.height, scene.width, 3))
    return Image.fromarray(pixels.round().astype(np.uint8), "RGB")


def turned_triangle(obj: Obj, degrees: float, k: int) -> list[tuple[float, float]]:
    """The upright triangle of ``obj`` turned about its box centre, scaled to fit its box, in
    ``k``-times supersampled pixels."""
    half = obj.size / 2
    corners = [(-half, half), (half, half), (0.0, -half)]
    a = math.radians(degrees)
    turned = [(x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a)) for x, y in corners]
    reach = max(max(abs(x), abs(y)) for x, y in turned)
    fit = half / reach
    return [((obj.cx + x * fit) * k, (obj.cy + y * fit) * k) for x, y in turned]


def render_other(scene: Scene, seed: int) -> Image.Image:
    """``scene`` drawn the other way (see the module docstring)."""
    rng = random.Random(seed)
    k = SUPERSAMPLE
    image = background(scene, rng).resize((scene.width * k, scene.height * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        fill = shade(COLOURS[obj.colour], rng)
        x0, y0 = (obj.cx - obj.size / 2) * k, (obj.cy - obj.size / 2) * k
        x1, y1 = x0 + obj.size * k - 1, y0 + obj.size * k - 1
        if obj.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif obj.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:
            draw.polygon(turned_triangle(obj, rng.uniform(-MAX_TURN_DEGREES, MAX_TURN_DEGREES), k),
                         fill=fill)
    return image.reduce(k)
