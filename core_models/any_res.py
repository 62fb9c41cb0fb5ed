"""Any-resolution input: one picture becomes a few ViT-sized views the LLM can tell apart.

The ViT only sees ``R x R`` pixels (448 in SEED-X). To keep detail in large or elongated
pictures, SEED-X picks a grid of ``R x R`` tiles (at most 4) from a fixed list, resizes the
picture to that grid *without keeping the aspect ratio and without padding*, cuts the tiles in
raster order and appends a global view (the whole picture squeezed to ``R x R``) **last**. Each
view gets a normalised centre position, which the MLLM turns into a learned positional term, and
its own block of image placeholder tokens in the prompt.

Everything here reproduces upstream ``src/inference/any_res.py`` (identical to the
``src/data`` copy) bit for bit, including its quirks: two competing grid rules where the one
with the smaller area wins, list-order scanning that only replaces on strict improvement, and a
1x1 grid that still yields two (identical) views. Sizes are always ``(width, height)``.
Nothing is rejected for being small or elongated (a 1x1000 picture is valid input upstream);
limits on untrusted input belong to ``image_io.load_image``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from .qwen_vit import image_transform

# --- the candidate grids --------------------------------------------------------------------


def parse_grids(resolution_grids: list[str], base_resolution: int) -> list[tuple[int, int]]:
    """``"AxB"`` -> ``(A*base, B*base)`` read as (width, height): ``"1x2"`` is a portrait grid.

    The order of ``resolution_grids`` matters: both selection rules keep the first of equally
    good candidates.
    """
    pinpoints = []
    for grid in resolution_grids:
        if not isinstance(grid, str):   # a config file can hold anything
            raise ValueError(f"resolution grid {grid!r} is not a string of the form 'COLSxROWS'")
        cols, sep, rows = grid.lower().partition("x")
        # isdecimal, not isdigit: "²" is a digit that int() refuses
        if not sep or not cols.isdecimal() or not rows.isdecimal() or int(cols) < 1 or int(rows) < 1:
            raise ValueError(f"resolution grid {grid!r} is not of the form 'COLSxROWS', e.g. '2x1'")
        pinpoints.append((int(cols) * base_resolution, int(rows) * base_resolution))
    if not pinpoints:
        raise ValueError("resolution_grids is empty: at least one grid (e.g. '1x1') is needed")
    return pinpoints


def select_best_resolution(original_size: tuple[int, int],
                           possible_resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """Candidate A, LLaVA-NeXT's rule: keep the most original pixels, then waste the least.

    The picture is scaled to fit inside each candidate; the "effective" resolution is how many
    original pixels survive that (never more than it has). This favours big grids for big
    pictures, which is why SEED-X pairs it with candidate B and keeps the smaller of the two.
    """
    original_width, original_height = original_size
    best_fit = None
    max_effective_resolution = 0
    min_wasted_resolution = float("inf")
    for width, height in possible_resolutions:
        scale = min(width / original_width, height / original_height)
        downscaled_width, downscaled_height = int(original_width * scale), int(original_height * scale)
        effective_resolution = min(downscaled_width * downscaled_height, original_width * original_height)
        wasted_resolution = width * height - effective_resolution
        if effective_resolution > max_effective_resolution or (
                effective_resolution == max_effective_resolution
                and wasted_resolution < min_wasted_resolution):
            max_effective_resolution = effective_resolution
            min_wasted_resolution = wasted_resolution
            best_fit = (width, height)
    return best_fit


def select_best_resolution_v2(original_size: tuple[int, int],
                              possible_resolutions: list[tuple[int, int]]) -> tuple[int, int]:
    """Candidate B, SEED-X's rule: the closest aspect ratio, then the closest area.

    Both mismatches are measured as ``max/min`` ratios, so being 2x too big and 2x too small
    count the same.
    """
    original_width, original_height = original_size
    original_aspect_ratio = original_height / original_width
    original_area = original_width * original_height
    best_fit = None
    min_aspect_ratio_diff = float("inf")
    min_area_ratio = float("inf")
    for width, height in possible_resolutions:
        aspect_ratio = height / width
        area = width * height
        aspect_ratio_diff = max(aspect_ratio, original_aspect_ratio) / min(aspect_ratio, original_aspect_ratio)
        area_ratio = max(area, original_area) / min(area, original_area)
        if aspect_ratio_diff < min_aspect_ratio_diff or (
                aspect_ratio_diff == min_aspect_ratio_diff and area_ratio < min_area_ratio):
            min_aspect_ratio_diff = aspect_ratio_diff
            min_area_ratio = area_ratio
            best_fit = (width, height)
    return best_fit


def choose_resolution(size: tuple[int, int], pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """The resolution upstream actually uses: B when A is strictly larger, otherwise A.

    This is why a 449x448 picture gets one tile (A = 896x448 loses to B = 448x448) and a 1x1000
    strip gets 1x3 tiles rather than 1x4.
    """
    width, height = size
    if width < 1 or height < 1:
        raise ValueError(f"cannot tile an image of size {width}x{height}: both sides must be >= 1")
    w1, h1 = select_best_resolution(size, pinpoints)
    w2, h2 = select_best_resolution_v2(size, pinpoints)
    return (w2, h2) if w1 * h1 > w2 * h2 else (w1, h1)


# --- where each view sits, and how the LLM is told ------------------------------------------


def tile_boxes(resolution: tuple[int, int], base_resolution: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes ``(left, top, right, bottom)`` of the ``R x R`` tiles, row by row, top to bottom."""
    width, height = resolution
    return [(j, i, j + base_resolution, i + base_resolution)
            for i in range(0, height, base_resolution)
            for j in range(0, width, base_resolution)]


def patch_positions(grid: tuple[int, int]) -> torch.Tensor:
    """Normalised centres ``(x, y)`` of the tiles in raster order, then ``(0.5, 0.5)`` for the global view.

    Returned as float32 ``(cols*rows + 1, 2)``; the values are computed in float32 like upstream.
    """
    cols, rows = grid
    x = (torch.arange(cols).repeat(rows, 1) + 0.5) / cols
    y = (torch.arange(rows).unsqueeze(1).repeat(1, cols) + 0.5) / rows
    tiles = torch.stack([x, y], dim=-1).flatten(0, 1)
    return torch.cat([tiles, torch.tensor([[0.5, 0.5]])], dim=0)


def patch_position_weights(positions: torch.Tensor) -> torch.Tensor:
    """The weights of the MLLM's four ``patch_pos_embed`` rows: ``[x/2, y/2, (1-x)/2, (1-y)/2]``.

    They always sum to 1, so a view's positional term is a convex mix of four learned corners;
    that is what lets the scheme extrapolate to grids unseen in training.
    """
    return torch.cat([positions, 1 - positions], dim=-1) / 2


def image_token_string(num_img_tokens: int = 64) -> str:
    """``<img_00000><img_00001>...``: the same placeholder ids are reused for every view."""
    return "".join(f"<img_{i:05d}>" for i in range(num_img_tokens))


def image_token_block(num_views: int, num_img_tokens: int = 64) -> str:
    """Prompt text for one any-res image: tiles wrapped in ``<patch>``, the global view in ``<img>``.

    The global view is always the last block and the only one in ``<img>...</img>``; the MLLM
    finds the slots to overwrite by these brackets, in the same order as ``pixel_values``.
    """
    if num_views < 1:
        raise ValueError(f"an image has at least one view, got num_views={num_views}")
    img = image_token_string(num_img_tokens)
    return f"<patch>{img}</patch>" * (num_views - 1) + f"<img>{img}</img>"


# --- the views themselves -------------------------------------------------------------------

@dataclass
class AnyResImage:
    """One picture ready for the ViT: ``V = cols*rows + 1`` views, tiles first, global view last.

    ``pixel_values`` (V, 3, R, R) float32 CLIP-normalised; ``patch_positions`` (V, 2) float32;
    ``grid`` is (cols, rows); ``views`` keeps the un-normalised PIL crops for display/debugging.
    """

    pixel_values: torch.Tensor
    patch_positions: torch.Tensor
    grid: tuple[int, int]
    views: list[Image.Image]

    @property
    def num_views(self) -> int:
        return len(self.views)


def process_anyres_image(image: Image.Image, resolution_grids: list[str],
                         base_resolution: int = 448) -> AnyResImage:
    """Tile ``image`` the way SEED-X does (see the module docstring).

    Both resizes use BICUBIC, Pillow's default for RGB, which upstream relies on implicitly; it
    is passed explicitly here so a change of Pillow's default cannot silently change the pixels.
    """
    if image.mode != "RGB":
        image = image.convert("RGB")
    pinpoints = parse_grids(resolution_grids, base_resolution)
    width, height = choose_resolution(image.size, pinpoints)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    cols, rows = width // base_resolution, height // base_resolution
    views = [resized.crop(box) for box in tile_boxes((width, height), base_resolution)]
    views.append(image.resize((base_resolution, base_resolution), Image.Resampling.BICUBIC))
    # The views are already R x R, so image_transform's bilinear resize is skipped: only
    # ToTensor + CLIP Normalize run, exactly the ViT's own preprocessing.
    return AnyResImage(pixel_values=image_transform(views, base_resolution),
                       patch_positions=patch_positions((cols, rows)),
                       grid=(cols, rows), views=views)
