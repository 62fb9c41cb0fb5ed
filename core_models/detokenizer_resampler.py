"""``ResamplerXLV2``: ViT-like image features -> SDXL's two text conditionings.

SDXL is conditioned on ``encoder_hidden_states`` (77 CLIP-L+bigG tokens, 768 + 1280 = 2048 wide)
and a pooled ``text_embeds`` vector (1280). SEED-X drops both text encoders and produces the two
from image features instead: a Perceiver resampler (open_flamingo / IP-Adapter style) pulls
``num_queries`` latents out of the features, two linear heads give the 768- and 1280-wide halves
of ``prompt_embeds``, and a CLIP-style ``AttentionPool2d`` gives ``pooled_prompt_embeds``.

Parameter names are the official state-dict keys (``latents``, ``proj_in``,
``layers.i.0.*`` attention, ``layers.i.1.{0,1,3}.*`` feed-forward, ``norm_out``, ``unet_proj_1``,
``unet_proj_2``, ``unet_attnpool.*``). LayerNorm eps is torch's default 1e-5 throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def FeedForward(dim: int, mult: int = 4) -> nn.Sequential:  # noqa: N802 (official name)
    """A plain Sequential, so the keys are ``0.*`` (LayerNorm), ``1.weight`` and ``3.weight``."""
    inner_dim = int(dim * mult)
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, inner_dim, bias=False),
        nn.GELU(),
        nn.Linear(inner_dim, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to ``cat(image features, latents)`` -- so also to themselves.

    Both q and k are scaled by ``dim_head**-0.25`` before the product (upstream: "more stable with
    f16 than dividing afterwards") and the softmax runs in float32; kept as is for fp16 parity.
    """

    def __init__(self, *, dim: int, dim_head: int = 64, heads: int = 8):
        super().__init__()
        self.dim_head = dim_head
        self.heads = heads
        inner_dim = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner_dim, bias=False)
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Linear(inner_dim, dim, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        batch, length, _ = t.shape
        return t.view(batch, length, self.heads, -1).transpose(1, 2)  # (B, H, L, dim_head)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, n1, dim)`` image features, ``latents``: ``(B, n2, dim)`` -> ``(B, n2, dim)``."""
        x = self.norm1(x)
        latents = self.norm2(latents)
        batch, length, _ = latents.shape

        q = self._heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = self._heads(k), self._heads(v)

        scale = 1 / math.sqrt(math.sqrt(self.dim_head))  # upstream's spelling of dim_head**-0.25
        weight = (q * scale) @ (k * scale).transpose(-2, -1)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        out = (weight @ v).permute(0, 2, 1, 3).reshape(batch, length, -1)
        return self.to_out(out)


class AttentionPool2d(nn.Module):
    """CLIP-ResNet's attention pool over a token sequence: the mean token, attended, is the output.

    It prepends the token mean, adds a learned ``(seq_len + 1, dim)`` table and keeps only output
    token 0. ``seq_len`` is therefore fixed to the resampler's ``num_queries``.
    """

    def __init__(self, seq_len: int, embed_dim: int, num_heads: int, output_dim: int | None = None):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(seq_len + 1, embed_dim) / embed_dim**0.5)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim or embed_dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(N, L, C)`` -> ``(N, output_dim)``."""
        x = x.permute(1, 0, 2)  # (L, N, C): multi_head_attention_forward is sequence-first
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight, out_proj_bias=self.c_proj.bias,
            use_separate_proj_weight=True, training=self.training, need_weights=False)
        return x[0]


class ResamplerXLV2(nn.Module):
    """Image features ``(N, L, embedding_dim)`` (any ``L``) -> ``(prompt_embeds, pooled_prompt_embeds)``.

    ``prompt_embeds`` is ``(N, num_queries, output1_dim + output2_dim)`` (SDXL
    ``encoder_hidden_states``); ``pooled_prompt_embeds`` is ``(N, output2_dim)`` (SDXL
    ``added_cond_kwargs["text_embeds"]``). The de-tokenizer was trained on 64 tokens (ViT output
    avg-pooled by 4), but the image-reconstruction script feeds the raw 256.

    ``normalize=True`` reproduces an upstream quirk: ``F.normalize(x)`` with its default ``dim=1``
    normalises over the *token* axis, not the feature axis. No released config enables it.
    """

    def __init__(self, dim: int, depth: int, dim_head: int, heads: int, num_queries: int,
                 embedding_dim: int, output1_dim: int, output2_dim: int, ff_mult: int = 4,
                 normalize: bool = False):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.normalize = normalize
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.in_dim = dim
        self.out_dim = output1_dim + output2_dim
        self.layers = nn.ModuleList([
            nn.ModuleList([
                PerceiverAttention(dim=dim, dim_head=dim_head, heads=heads),
                FeedForward(dim=dim, mult=ff_mult),
            ])
            for _ in range(depth)
        ])
        self.unet_proj_1 = nn.Linear(dim, output1_dim)
        self.unet_proj_2 = nn.Linear(dim, output2_dim)
        self.unet_attnpool = AttentionPool2d(num_queries, dim, heads, output2_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.latents.repeat(x.size(0), 1, 1)
        if self.normalize:
            x = F.normalize(x)  # dim=1: the token axis (upstream quirk, see class docstring)
        x = self.proj_in(x)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        hidden = self.norm_out(latents)
        prompt_embeds = torch.cat([self.unet_proj_1(hidden), self.unet_proj_2(hidden)], dim=-1)
        return prompt_embeds, self.unet_attnpool(hidden)
