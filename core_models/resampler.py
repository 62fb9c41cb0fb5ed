"""The shared Qwen-VL ``Resampler``: learned queries cross-attending to a token sequence.

SEED-X uses this one class three times: as the ViT's attention pool (256 queries, LayerNorm eps
1e-6), as the MLLM *input* resampler (ViT tokens -> 64 LLM embeddings) and as the *output*
resampler (64 LLM hidden states -> 64 ViT-like features). The last two use torch's default
LayerNorm eps (1e-5); passing ``norm_layer`` keeps the three instances one class, as upstream.

Parameter names (``query``, ``pos_embed``, ``kv_proj``, ``attn.*``, ``ln_q``, ``ln_kv``) are the
official state-dict keys, so released checkpoints load without renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table, ``(grid_size**2, embed_dim)`` in float64.

    Upstream builds the mesh as ``meshgrid(w, h)``, so the first half of the channels encodes the
    column (x) although the code calls it ``emb_h``. Checkpoints store this table anyway; it is
    only computed here to initialise fresh (tiny or trained-from-scratch) models identically.
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # == np.meshgrid(w, h)
    emb_first = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_w)
    emb_second = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid_h)
    return torch.cat([emb_first, emb_second], dim=1)


def get_abs_pos(abs_pos: torch.Tensor, tgt_len: int) -> torch.Tensor:
    """Resize a square ``(L, C)`` position table to ``tgt_len`` rows, bicubically, in float32.

    Qwen-VL stores 16x16 tables and interpolates on every forward (16x16 -> 32x32 at 448 px,
    8x8 -> 16x16 for 256 ViT tokens entering the input resampler).
    """
    src_size = int(math.sqrt(abs_pos.size(0)))
    tgt_size = int(math.sqrt(tgt_len))
    if src_size == tgt_size:
        return abs_pos
    dtype = abs_pos.dtype
    grid = abs_pos.float().reshape(1, src_size, src_size, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(tgt_size, tgt_size), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(dtype=dtype)


class Resampler(nn.Module):
    """``grid_size**2`` learned queries attend to ``x`` (any square number of tokens).

    The query's position term is the un-interpolated table; the key's is resized to the input
    length; the value carries no position. Output width is ``embed_dim``.
    """

    def __init__(self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None,
                 norm_layer: type[nn.Module] | callable = nn.LayerNorm):
        super().__init__()
        self.num_queries = grid_size**2
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.pos_embed = nn.Parameter(get_2d_sincos_pos_embed(embed_dim, grid_size).float(),
                                      requires_grad=False)
        self.query = nn.Parameter(torch.zeros(self.num_queries, embed_dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        if kv_dim is not None and kv_dim != embed_dim:
            self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        else:
            self.kv_proj = nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads)
        self.ln_q = norm_layer(embed_dim)
        self.ln_kv = norm_layer(embed_dim)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.zeros_(module.bias)
            nn.init.ones_(module.weight)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``(N, L, kv_dim)`` with ``L`` a square number. Returns ``(N, num_queries, embed_dim)``."""
        pos_k = get_abs_pos(self.pos_embed, x.size(1))
        kv = self.ln_kv(self.kv_proj(x)).permute(1, 0, 2)  # (L, N, E): MHA is sequence-first
        n = kv.shape[1]
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, n, -1)
        out = self.attn(q + self.pos_embed.unsqueeze(1), kv + pos_k.unsqueeze(1), kv,
                        attn_mask=attn_mask, need_weights=False)[0]
        return out.permute(1, 0, 2)
