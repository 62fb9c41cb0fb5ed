"""The Qwen-VL visual encoder (ViT-G/14 at 448 px) and its inference preprocessing.

SEED-X reuses Qwen-VL-Chat's vision tower unchanged: a 48-layer ViT whose 1024 patch tokens are
pooled by a ``Resampler`` (256 learned queries) into ``(N, 256, 4096)`` features. Those features
feed the MLLM's input resampler and, pooled to 64 tokens, are also what the de-tokenizer was
trained to turn back into images.

Module and parameter names are the official ones (``conv1``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``attn_pool.*``, ``ln_post``, ``proj``) so ``qwen_vit_G.pt`` loads
with ``strict=True``. Things that look like CLIP but are not:

* the packed ``in_proj`` is laid out **per head** (Megatron style), not ``[all q|all k|all v]``;
* there is no class token, and the 16x16 positional table is bicubically resized every forward;
* LayerNorm eps is 1e-6 everywhere (attention pool and ``ln_post`` included), GELU is exact erf;
* the output is ``ln_post(x) @ proj`` -- a right multiplication, not a Linear.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .resampler import Resampler, get_abs_pos

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- preprocessing ---------------------------------------------------------------------------

def image_transform(images: Image.Image | Sequence[Image.Image], image_size: int = 448) -> torch.Tensor:
    """The inference transform of ``configs/processer/qwen_448_transform.yaml``: ``(N, 3, S, S)``.

    Upstream this is torchvision's ``Resize((S, S)) -> ToTensor -> Normalize``. On a PIL image
    torchvision's Resize is ``img.resize((S, S), BILINEAR)`` (not the BICUBIC of the encoder's own
    unused ``image_transform`` attribute), so the aspect ratio is not kept. The resize is done by
    Pillow on the uint8 image, exactly as upstream, so results match to the last bit.
    """
    if isinstance(images, Image.Image):
        images = [images]
    mean = torch.tensor(OPENAI_CLIP_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD, dtype=torch.float32).view(3, 1, 1)
    out = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))  # (S, S, 3)
        pixels = pixels.permute(2, 0, 1).float().div(255)  # ToTensor
        out.append((pixels - mean) / std)  # Normalize
    return torch.stack(out)


def negative_pixel_values(image_size: int = 448) -> torch.Tensor:
    """The de-tokenizer's classifier-free-guidance "negative" image, ``(1, 3, S, S)``.

    Upstream feeds ``torch.zeros`` *after* normalisation, i.e. the CLIP-mean grey image, not black.
    """
    return torch.zeros(1, 3, image_size, image_size)


# --- transformer -----------------------------------------------------------------------------

class VisualAttention(nn.Module):
    """Self-attention whose packed ``in_proj`` output is split per head as ``[q_h | k_h | v_h]``.

    This Megatron layout is why the weights cannot be loaded into ``nn.MultiheadAttention``.
    Sequence-first, like the rest of the encoder.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        assert embed_dim % num_heads == 0
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(L, N, D)`` -> ``(L, N, D)``."""
        seq_len, batch, _ = x.shape
        qkv = self.in_proj(x).view(seq_len, batch, self.num_heads, 3 * self.head_dim)
        q, k, v = (t.permute(1, 2, 0, 3) for t in qkv.split(self.head_dim, dim=-1))  # (N, H, L, hd)
        # Upstream divides q by sqrt(head_dim) and runs bmm/softmax/bmm; SDPA is the same math
        # (measured ~1e-6 apart on the golden fixture).
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(2, 0, 1, 3).reshape(seq_len, batch, self.embed_dim)
        return self.out_proj(out)


class VisualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, d_model: int, n_head: int, mlp_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.ln_1 = norm_layer(d_model)
        self.ln_2 = norm_layer(d_model)
        mlp_width = int(d_model * mlp_ratio)  # 1664 * 4.9231 -> 8192
        self.attn = VisualAttention(d_model, n_head)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, mlp_width)),
            ("gelu", act_layer()),
            ("c_proj", nn.Linear(mlp_width, d_model)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TransformerBlock(nn.Module):
    """The stack of ``resblocks``; upstream always checkpoints activations when training."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList([
            VisualAttentionBlock(width, heads, mlp_ratio, act_layer=act_layer, norm_layer=norm_layer)
            for _ in range(layers)
        ])
        self.gradient_checkpointing = True

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def get_cast_device(self) -> torch.device:
        return self.resblocks[0].mlp.c_fc.weight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


# --- the encoder -----------------------------------------------------------------------------

class VisionTransformerWithAttnPool(nn.Module):
    """Pixels ``(N, 3, S, S)`` (normalised, see ``image_transform``) -> ``(N, n_queries, output_dim)``.

    ``patch_pos=True`` (unused by every released SEED-X config) adds upstream's own 2-D patch
    position term after the pool: ``(cat([p, 1 - p]) / 2) @ patch_pos_embed`` for one ``(x, y)``
    centre ``p`` per image, broadcast over its tokens -- the same trick the MLLM applies in
    ``ContinuousLVLM`` with its own ``patch_pos_embed``.
    """

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, n_queries: int = 256, output_dim: int = 512,
                 patch_pos: bool = False):
        super().__init__()
        self.image_size = (image_size, image_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.output_dim = output_dim

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        # Always 16x16 entries, whatever the image size: resized to the patch grid on each forward.
        self.positional_embedding = nn.Parameter(width**-0.5 * torch.randn(256, width))
        self.ln_pre = norm_layer(width)
        self.transformer = TransformerBlock(width, layers, heads, mlp_ratio,
                                            act_layer=nn.GELU, norm_layer=norm_layer)
        self.attn_pool = Resampler(grid_size=int(math.sqrt(n_queries)), embed_dim=output_dim,
                                   num_heads=output_dim // 128, kv_dim=width, norm_layer=norm_layer)
        self.patch_pos = patch_pos
        if patch_pos:
            # One row per image corner (x, y, 1-x, 1-y).
            self.patch_pos_embed = nn.Parameter(output_dim**-0.5 * torch.randn(4, output_dim))
        self.ln_post = norm_layer(output_dim)
        self.proj = nn.Parameter(output_dim**-0.5 * torch.randn(output_dim, output_dim))

    def forward(self, x: torch.Tensor, patch_positions: torch.Tensor | None = None) -> torch.Tensor:
        # Like upstream, the input follows the weights (fp16/bf16 checkpoints take fp32 pixels).
        x = x.to(dtype=self.transformer.get_cast_dtype(), device=self.transformer.get_cast_device())
        x = self.conv1(x)  # (N, width, grid, grid)
        x = x.flatten(2).permute(0, 2, 1)  # (N, grid*grid, width), row-major patches
        x = x + get_abs_pos(self.positional_embedding, x.size(1))
        x = self.ln_pre(x)

        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # blocks run sequence-first

        x = self.attn_pool(x)
        if self.patch_pos:
            if patch_positions is None:
                raise ValueError("patch_pos=True needs patch_positions, one (x, y) centre per image")
            p = patch_positions.to(dtype=x.dtype, device=x.device)
            x = x + (torch.cat([p, 1 - p], dim=-1) / 2).mm(self.patch_pos_embed).unsqueeze(1)
        x = self.ln_post(x)
        return x @ self.proj
