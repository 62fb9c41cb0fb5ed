"""``ContinuousLVLM``: the SEED-X "agent", a stock Llama with continuous image features in and out.

Official counterpart: ``src/models/mllm/seed_x.py`` (AILab-CVC/SEED-X @ 420d347). The released
``llm/`` folder loads into a plain ``transformers.LlamaForCausalLM`` (the official xformers copy
has the same parameter names and, for unpadded batch-1 inference, the same numbers), so there is
no copy of Llama here. What SEED-X adds around it is small and lives in this file:

* **input side**: ViT tokens ``(V, 256, vit_dim)`` -> ``input_resampler`` -> ``(V, 64, hidden)``,
  plus the extrapolatable 2-D patch position term ``(cat([p, 1-p]) / 2) @ patch_pos_embed``
  (one ``hidden``-vector per view, broadcast over its 64 tokens). The result overwrites the
  placeholder slots strictly between each ``<img>``/``<patch>`` and its closing tag.
* **output side**: the post-final-norm hidden states at the input positions of the 64 generated
  image tokens -> ``output_resampler`` -> ``(N, 64, vit_dim)`` ViT-like features for the
  de-tokenizer. During training they regress the (``vit_down``-pooled) ViT features of the
  target image with MSE; ``total = lm_loss_scale * CE + rec_loss_scale * MSE``.

Parameter names are the official state-dict keys: ``llm.model.*``, ``llm.lm_head.weight``,
``input_resampler.*``, ``output_resampler.*``, ``patch_pos_embed``. Step-wise decoding (KV cache,
forced image runs, streaming) is in ``generation.py``, which drives any model shaped like this one
(``generation.AgentLike``); ``generate`` here is the official one-shot call on top of it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from . import generation
from .resampler import Resampler

if TYPE_CHECKING:
    from .config import SeedXConfig

IGNORE_INDEX = -100


class ContinuousLVLM(nn.Module):
    """SEED-X agent. Constructor arguments and attribute names are the official ones."""

    def __init__(self, llm: LlamaForCausalLM, input_resampler: Resampler, output_resampler: Resampler,
                 lm_loss_scale: float = 1.0, rec_loss_scale: float = 0.0, add_patch_pos: bool = False,
                 vit_down: bool = False, mse: bool = False):
        super().__init__()
        self.llm = llm
        self.input_resampler = input_resampler
        self.output_resampler = output_resampler
        self.lm_loss_scale = lm_loss_scale
        self.rec_loss_scale = rec_loss_scale
        self.add_patch_pos = add_patch_pos
        self.vit_down = vit_down
        self.pool_size = self.stride = 4  # vit_down: 256 ViT tokens -> 64 regression targets
        self.mse = mse
        if add_patch_pos:
            patch_dim = input_resampler.embed_dim
            # Rows weighted by [x, y, 1-x, 1-y] / 2 of the view's centre (see _patch_pos_term).
            self.patch_pos_embed = nn.Parameter((patch_dim**-0.5) * torch.randn(4, patch_dim))

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: "SeedXConfig", dtype: torch.dtype | None = None,
                    attn_implementation: str | None = None) -> "ContinuousLVLM":
        """Build an (untrained) agent of the sizes in ``config``; weights are loaded separately.

        This is how the tiny, Nano and full stacks are all built. It allocates nothing under
        ``with torch.device("meta")`` (HF's ``post_init`` and the resampler's sin-cos table run on
        meta tensors), which is what the manifest checks and the streamed checkpoint loader use.
        ``dtype`` builds the modules directly in that dtype (no fp32 copy on the way).
        """
        llm_config = LlamaConfig(**config.llm)
        if attn_implementation is not None:
            llm_config._attn_implementation = attn_implementation
        with default_dtype(dtype):
            llm = LlamaForCausalLM(llm_config)
            model = cls(llm, Resampler(**config.input_resampler), Resampler(**config.output_resampler),
                        **config.agent)
        if dtype is not None:
            model.to(dtype)  # the resamplers' sin-cos tables are built in float32 on purpose
        return model

    @property
    def num_img_tokens(self) -> int:
        """LLM slots per view (64): the input resampler's query count."""
        return self.input_resampler.num_queries

    # ------------------------------------------------------------------------------------------
    # input side: ViT features -> LLM embeddings -> placeholder slots
    # ------------------------------------------------------------------------------------------
    def _patch_pos_term(self, patch_positions: torch.Tensor) -> torch.Tensor:
        """``(V, 2)`` view centres in [0,1]^2 -> ``(V, 1, hidden)``.

        Upstream: ``torch.mm(torch.cat([p, 1 - p], -1) / 2, patch_pos_embed)``, i.e. the rows get
        weights ``[x/2, y/2, (1-x)/2, (1-y)/2]`` (the paper's formula lacks the 1/2; the code wins).
        """
        p = patch_positions.to(self.patch_pos_embed)
        return torch.mm(torch.cat([p, 1 - p], dim=-1) / 2, self.patch_pos_embed).unsqueeze(1)

    def encode_images(self, image_embeds: torch.Tensor,
                      patch_positions: torch.Tensor | None = None) -> torch.Tensor:
        """``(V, L, vit_dim)`` ViT tokens (+ ``(V, 2)`` positions) -> ``(V, Q, hidden)`` LLM embeddings.

        As in the official ``forward``, the position term is skipped when ``patch_positions`` is
        None (the official ``generate`` asserts instead; ``generation.generate`` does too).
        """
        query = self.input_resampler.query
        x = image_embeds.to(device=query.device, dtype=query.dtype)
        out = self.input_resampler(x)
        if self.add_patch_pos and patch_positions is not None:
            out = out + self._patch_pos_term(patch_positions)
        return out

    @staticmethod
    def build_ids_cmp_mask(input_ids: torch.Tensor, boi_token_id: int, eoi_token_id: int,
                           bop_token_id: int | None = None, eop_token_id: int | None = None) -> torch.Tensor:
        """True strictly between each ``<img>``/``<patch>`` and its closing ``</img>``/``</patch>``.

        Upstream pairs the *sorted* positions of all opening tags with the sorted positions of all
        closing tags (``zip``), per row, so an unmatched trailing tag is ignored. Works on ``(S,)``
        or ``(B, S)`` ids.
        """
        ids = torch.as_tensor(input_ids)
        rows = ids.reshape(-1, ids.shape[-1])
        mask = torch.zeros_like(rows, dtype=torch.bool)
        opens = [t for t in (boi_token_id, bop_token_id) if t is not None]
        closes = [t for t in (eoi_token_id, eop_token_id) if t is not None]
        for b, row in enumerate(rows):
            starts = torch.where(torch.isin(row, torch.tensor(opens, device=row.device)))[0].tolist()
            ends = torch.where(torch.isin(row, torch.tensor(closes, device=row.device)))[0].tolist()
            for start, end in zip(starts, ends):
                mask[b, start + 1:end] = True
        return mask.reshape(ids.shape)

    def embed_inputs(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None = None,
                     patch_positions: torch.Tensor | None = None,
                     ids_cmp_mask: torch.Tensor | None = None,
                     embeds_cmp_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with the image placeholder slots overwritten: ``(B, S, hidden)``.

        ``inputs_embeds[ids_cmp_mask] = encoded[embeds_cmp_mask].reshape(-1, hidden)``: the
        selected views fill the masked slots row-major over (batch, position), in tensor order
        (tiles first, global view last, as the any-res code lays them out). The bracket tokens
        keep their learned embeddings.
        """
        inputs_embeds = self.llm.get_input_embeddings()(input_ids)
        if image_embeds is None:
            return inputs_embeds
        if ids_cmp_mask is None:
            raise ValueError("image_embeds given without ids_cmp_mask: build it with "
                             "ContinuousLVLM.build_ids_cmp_mask(input_ids, boi, eoi, bop, eop)")
        if embeds_cmp_mask is None:
            embeds_cmp_mask = torch.ones(image_embeds.shape[0], dtype=torch.bool, device=image_embeds.device)
        views = image_embeds[embeds_cmp_mask]
        positions = patch_positions[embeds_cmp_mask] if patch_positions is not None else None
        encoded = self.encode_images(views, positions)
        return self._splice(inputs_embeds, ids_cmp_mask, encoded)

    def _splice(self, inputs_embeds: torch.Tensor, ids_cmp_mask: torch.Tensor,
                encoded: torch.Tensor) -> torch.Tensor:
        ids_cmp_mask = ids_cmp_mask.to(inputs_embeds.device)
        num_slots = int(ids_cmp_mask.sum())
        if num_slots != encoded.shape[0] * encoded.shape[1]:
            raise ValueError(
                f"image slot mismatch: ids_cmp_mask selects {num_slots} positions but "
                f"{encoded.shape[0]} views x {encoded.shape[1]} tokens = "
                f"{encoded.shape[0] * encoded.shape[1]} embeddings were given (each image block must "
                f"hold exactly {encoded.shape[1]} placeholders, one view per block)")
        if num_slots:
            inputs_embeds[ids_cmp_mask] = encoded.reshape(-1, inputs_embeds.shape[-1]).to(inputs_embeds.dtype)
        return inputs_embeds

    # ------------------------------------------------------------------------------------------
    # LLM pass shared by training and generation: post-norm hidden states + logits
    # ------------------------------------------------------------------------------------------
    def decoder(self) -> nn.Module:
        """The bare ``LlamaModel`` (also through a peft wrapper): returns post-final-norm states."""
        return self.llm.get_decoder()

    def lm_head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.llm.get_output_embeddings()(hidden_states)

    # ------------------------------------------------------------------------------------------
    # training forward
    # ------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                embeds_gen_mask: torch.Tensor | None = None, embeds_cmp_mask: torch.Tensor | None = None,
                ids_gen_mask: torch.Tensor | None = None, ids_cmp_mask: torch.Tensor | None = None,
                patch_positions: torch.Tensor | None = None) -> dict[str, Any]:
        """Teacher-forced pass with the official losses; returns a dict of losses and intermediates.

        ``image_embeds`` ``(N, L, vit_dim)`` holds every view of the batch; ``embeds_cmp_mask``
        picks the *input* views (spliced into ``ids_cmp_mask``), ``embeds_gen_mask`` the
        regression *targets* (predicted from the hidden states at ``ids_gen_mask``). A view may be
        neither (e.g. a target image's tiles). Keys: ``total_loss``, ``lm_loss``, ``rec_loss``
        (0-dim), ``logits``, ``last_hidden_state`` (post-norm), ``llm_inputs_embeds``,
        ``input_resampler_out`` (before the position term), and when there is a target
        ``output_resampler_in``, ``recon_image_embeds``, ``target_embeds_vit_down``.

        Note that HF Llama honours ``attention_mask`` while the official xformers Llama ignores
        it (always causal): logits at padded positions differ, losses do not (pads are -100).
        """
        out: dict[str, Any] = {}
        inputs_embeds = self.llm.get_input_embeddings()(input_ids)
        dim = inputs_embeds.shape[-1]

        has_cmp = image_embeds is not None and embeds_cmp_mask is not None and bool(embeds_cmp_mask.any())
        if has_cmp:
            resampled = self.input_resampler(image_embeds[embeds_cmp_mask].to(self.input_resampler.query))
            out["input_resampler_out"] = resampled
            encoded = resampled
            if self.add_patch_pos and patch_positions is not None:
                encoded = encoded + self._patch_pos_term(patch_positions[embeds_cmp_mask])
            inputs_embeds = self._splice(inputs_embeds, ids_cmp_mask, encoded)
        else:
            # Upstream runs the resampler on a random fake image and adds it times 0, so that every
            # trainable parameter is in the graph (DDP / ZeRO need that). A zero-weighted sum of
            # the parameters does the same without consuming RNG.
            inputs_embeds = inputs_embeds + _zero_touch(self.input_resampler, self._patch_params())
        out["llm_inputs_embeds"] = inputs_embeds

        hidden = self.decoder()(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                use_cache=False).last_hidden_state
        logits = self.lm_head(hidden)
        out["last_hidden_state"] = hidden
        out["logits"] = logits

        lm_loss = _causal_lm_loss(logits, labels) if labels is not None else logits.new_zeros(())

        has_gen = image_embeds is not None and embeds_gen_mask is not None and bool(embeds_gen_mask.any())
        if has_gen:
            target = image_embeds[embeds_gen_mask]
            if self.vit_down:  # 1x4 strips of the flattened 16x16 token grid, not 2x2 pooling
                target = F.avg_pool1d(target.permute(0, 2, 1), kernel_size=self.pool_size,
                                      stride=self.stride).permute(0, 2, 1)
            output_in = hidden[ids_gen_mask].view(target.shape[0], -1, dim)
            recon = self.output_resampler(output_in)
            target = target.to(recon.dtype).detach()
            rec_loss = F.mse_loss(recon, target) if self.mse else cosine_loss(recon, target)
            out.update(output_resampler_in=output_in, recon_image_embeds=recon,
                       target_embeds_vit_down=target)
        else:
            rec_loss = _zero_touch(self.output_resampler).to(lm_loss)

        out["lm_loss"] = lm_loss
        out["rec_loss"] = rec_loss
        out["total_loss"] = self.lm_loss_scale * lm_loss + self.rec_loss_scale * rec_loss
        return out

    def _patch_params(self) -> list[nn.Parameter]:
        return [self.patch_pos_embed] if self.add_patch_pos else []

    # ------------------------------------------------------------------------------------------
    # official one-shot generation (implemented step-wise in generation.py)
    # ------------------------------------------------------------------------------------------
    def generate(self, tokenizer, input_ids, **kwargs):
        """Official ``ContinuousLVLM.generate`` semantics; see ``generation.generate``."""
        return generation.generate(self, tokenizer, input_ids, **kwargs)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over labels != -100 (the 4.30 Llama copy, fp32 logits)."""
    shift_logits = logits[..., :-1, :].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[..., 1:].reshape(-1).to(shift_logits.device)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)


def cosine_loss(rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Upstream's alternative regression loss (``mse=False``): mean of 1 - cos over tokens."""
    target = target / target.norm(dim=-1, keepdim=True)
    rec = rec / rec.norm(dim=-1, keepdim=True)
    return (1 - (target * rec).sum(-1)).mean()


def _zero_touch(module: nn.Module, extra: list[nn.Parameter] = ()) -> torch.Tensor:
    """0.0 that depends on every trainable parameter (only built when autograd is recording)."""
    params = [p for p in list(module.parameters()) + list(extra) if p.requires_grad]
    if not torch.is_grad_enabled() or not params:
        return torch.zeros((), device=params[0].device if params else None)
    return sum(p.sum() for p in params) * 0.0


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Modules built inside get ``dtype`` parameters directly (no fp32 copy to cast from); None
    leaves torch's default."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
