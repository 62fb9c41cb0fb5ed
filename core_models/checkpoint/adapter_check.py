"""Checking an extracted adapter against the variant it replaces, with neither LLM in memory.

The check of `adapter_extraction` reads the adapter back from the files it wrote
(`AdapterMergedView`, the dense weights peft computes on the fly) and runs a fixed prompt
through base + adapter and through the merged variant one decoder layer at a time
(`compare_streamed_logits`), so a 13B pair is compared in the memory of two decoder layers.
`logits_agreement` says whether the difference is within the stated tolerance.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .reading import PathLike

LOGITS_RTOL = 1e-2       # max |logit difference| / max |logit| of the variant
PROMPT_LENGTH = 32
PEFT_PREFIX = "base_model.model."            # peft's key prefix in adapter_model.safetensors
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def llm_config(llm_dir: Path):
    """The ``LlamaConfig`` of an HF Llama folder."""
    from transformers import LlamaConfig

    from ..stack import llm_config_from_folder

    return LlamaConfig(**llm_config_from_folder(llm_dir))


class AdapterMergedView:
    """``base`` with the peft adapter in ``folder`` applied, one tensor at a time, read back from
    the written files: what peft computes on the fly, merged per tensor for the check."""

    def __init__(self, base: Mapping[str, torch.Tensor], folder: PathLike):
        from .reading import SafetensorsFile

        folder = Path(folder)
        self.base = base
        self.config = json.loads((folder / "adapter_config.json").read_text())
        self.tensors = SafetensorsFile(folder / ADAPTER_WEIGHTS)  # read per tensor, on use
        self._keys = set(self.tensors)

    def _scaling(self, module: str) -> float:
        cfg = self.config
        r = cfg.get("rank_pattern", {}).get(module, cfg["r"])
        alpha = cfg.get("alpha_pattern", {}).get(module, cfg["lora_alpha"])
        return alpha / r

    def __getitem__(self, key: str) -> torch.Tensor:
        if PEFT_PREFIX + key in self._keys:
            return self.tensors[PEFT_PREFIX + key].float()
        weight = self.base[key].float()
        module = key.rsplit(".", 1)[0]
        prefix = PEFT_PREFIX + module
        if f"{prefix}.lora_A.weight" in self._keys:
            b, a = self.tensors[f"{prefix}.lora_B.weight"], self.tensors[f"{prefix}.lora_A.weight"]
            weight = weight + self._scaling(module) * (b.float() @ a.float())
        elif f"{prefix}.lora_embedding_A" in self._keys:
            b, a = self.tensors[f"{prefix}.lora_embedding_B"], self.tensors[f"{prefix}.lora_embedding_A"]
            weight = weight + self._scaling(module) * (b.float() @ a.float()).mT
        if f"{prefix}.token_adapter.trainable_tokens_delta" in self._keys:
            rows = self.tensors[f"{prefix}.token_adapter.trainable_tokens_delta"]
            index = torch.tensor((self.config.get("trainable_token_indices") or {})[module])
            weight = weight.index_copy(0, index, rows.float())
        return weight

    def __contains__(self, key: object) -> bool:
        return key in self.base


def fixed_prompt(vocab_size: int, length: int = PROMPT_LENGTH) -> torch.Tensor:
    """The check's prompt: ``length`` token ids drawn with a fixed seed (the same on every run
    and machine; no tokenizer needed)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (1, length), generator=gen)


def compare_streamed_logits(llm_dir: PathLike, paths: Mapping[str, Callable[[str], torch.Tensor]],
                            input_ids: torch.Tensor, *, device: str | torch.device = "cpu",
                            progress: bool | None = None) -> dict[str, torch.Tensor]:
    """Final logits of each weight source in ``paths`` on ``input_ids``, streamed layer by layer.

    One ``LlamaDecoderLayer`` per source at a time is built (on ``meta``, then its weights
    assigned from the source), so memory is one decoder layer per path plus the hidden states:
    a 13B base + adapter and the merged variant can be compared on a machine that holds neither.
    Each path runs on its own hidden states, in float32.
    """
    from tqdm.auto import tqdm
    from transformers.models.llama.modeling_llama import (LlamaDecoderLayer, LlamaRMSNorm,
                                                          LlamaRotaryEmbedding)

    config = llm_config(Path(llm_dir))
    config._attn_implementation = "eager"
    t = input_ids.shape[1]
    mask = torch.full((t, t), float("-inf"), device=device).triu(1)[None, None]
    positions = torch.arange(t, device=device)[None]
    rotary = LlamaRotaryEmbedding(config).to(device)
    hidden = {name: torch.nn.functional.embedding(input_ids.to(device),
                                                  read("model.embed_tokens.weight").to(device))
              for name, read in paths.items()}
    position_embeddings = rotary(hidden[next(iter(hidden))], positions)
    bar = tqdm(range(config.num_hidden_layers), desc="logits check", unit="layer", leave=False,
               disable=progress is False if progress is not None else None)
    with torch.no_grad():
        for i in bar:
            for name, read in paths.items():
                with torch.device("meta"):
                    layer = LlamaDecoderLayer(config, i)
                prefix = f"model.layers.{i}."
                state = {k: read(prefix + k).to(device) for k in layer.state_dict()}
                layer.load_state_dict(state, assign=True)
                out = layer(hidden[name], attention_mask=mask, position_ids=positions,
                            position_embeddings=position_embeddings)
                hidden[name] = out[0] if isinstance(out, tuple) else out
                del layer, state
        bar.close()
        logits = {}
        for name, read in paths.items():
            with torch.device("meta"):
                norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            norm.load_state_dict({"weight": read("model.norm.weight").to(device)}, assign=True)
            try:
                head = read("lm_head.weight")
            except KeyError:  # tied embeddings
                head = read("model.embed_tokens.weight")
            logits[name] = (norm(hidden[name]) @ head.to(device).float().mT).cpu()
    return logits


def logits_agreement(adapter: torch.Tensor, variant: torch.Tensor,
                     rtol: float = LOGITS_RTOL) -> dict[str, Any]:
    """Max abs / relative difference and top-1 agreement of two logit tensors.

    ``ok`` when the max abs difference is at most ``rtol`` x the variant's max abs logit and every
    top-1 disagreement is a near tie (the variant's top-2 margin below twice the max difference):
    a rank-r approximation may legitimately flip a tie, never a clear winner.
    """
    diff = (adapter - variant).abs()
    max_abs, scale = float(diff.max()), float(variant.abs().max())
    top2 = variant.topk(2, dim=-1).values
    margin = top2[..., 0] - top2[..., 1]
    agree = adapter.argmax(-1) == variant.argmax(-1)
    clear_flips = int(((~agree) & (margin > 2 * max_abs)).sum())
    relative = max_abs / scale if scale else 0.0
    return dict(max_abs=max_abs, max_rel=relative, top1_agreement=float(agree.float().mean()),
                clear_top1_flips=clear_flips, rtol=rtol,
                ok=bool(relative <= rtol and clear_flips == 0))
