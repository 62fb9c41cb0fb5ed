"""Pictures as the stages store and feed them: uint8 tensors, normalised per encoder.

Everything rendered is kept as uint8 ``(N, 3, R, R)`` (small on disk, exact); each encoder gets
its own normalisation at the last moment: CLIP's mean/std for the ViT (what ``image_transform``
does in the product path), [-1, 1] for the VAE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from core_models.qwen_vit import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

_MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def to_uint8(image: Image.Image, size: int | None = None) -> torch.Tensor:
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def clip_normalise(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,R,R) -> the ViT's CLIP-normalised input (what ``image_transform`` gives)."""
    return (u8.float() / 255 - _MEAN) / _STD


def vae_normalise(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of two [0,1] batches."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def grid(images: list[Image.Image], cols: int = 8) -> Image.Image:
    """A contact sheet (the samples a stage leaves for a human to look at)."""
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for k, im in enumerate(images):
        sheet.paste(im.resize((w, h)), ((k % cols) * w, (k // cols) * h))
    return sheet
