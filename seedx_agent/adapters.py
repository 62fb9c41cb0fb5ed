"""Variants as peft LoRA adapters on one base LLM, switched per turn.

A model folder with ``adapters/<name>/`` (peft LoRA folders, as the Nano ships) gets one variant
per adapter, all resident at once on the one base LLM: switching variant is a flag flip, no
weights move. `AdapterHost` does the switching; `adapter_variants` says how each adapter runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .variants import PromptTemplate, Variant, AdapterWeights

ADAPTERS_DIRNAME = "adapters"
BASE_ALIAS = "base"  # with adapters: the shared base LLM, every adapter disabled
MANIFEST_NAME = "nano_manifest.json"
# How known adapter names run, unless the model folder says otherwise (``adapters/<name>`` plus
# an optional ``variants`` entry in ``nano_manifest.json``): SEED-X-Edit's single-turn,
# single-image editing on the stage-2 de-tokenizer, and try-on's person as the stage-2 condition
# (its ``roles`` let the try-on skill find it).
ADAPTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "seed_x_edit": dict(description="editing adapter: single-turn, one image, stage-2 de-tokenizer",
                        detokenizer_stage=2, single_image_edit=True,
                        template=PromptTemplate(multi_turn=False)),
    "tryon": dict(description="try-on adapter: person + garment in, the person (the stage-2 "
                              "condition) dressed out", detokenizer_stage=2, roles=("tryon",)),
    # the designer, slide and story adapters were trained on single requests: a conversation
    # before the request garbles their answers, so each turn is its own single-turn prompt
    "designer": dict(description="designer adapter: posters with their intent, and suggested "
                                 "improvements drawn as edits", roles=("designer",),
                     template=PromptTemplate(multi_turn=False)),
    "slide": dict(description="slide adapter: title, bullets and the layout as boxes, then the "
                              "whole slide as one picture", roles=("slides",),
                  template=PromptTemplate(multi_turn=False)),
    # trained on single steps (one picture in, the next sentence and scene out), so each story
    # step is its own single-turn prompt on the picture before
    "story": dict(description="story adapter: a scene in, the next sentence and scene out",
                  roles=("story",), template=PromptTemplate(multi_turn=False)),
}


AGENT_WEIGHTS = "agent.safetensors"          # an adapter's own resampler / patch_pos_embed tensors
EXTRACTION_REPORT = "extraction_report.json"  # written by ``seedx convert extract-adapters``


def adapter_names(root: Path) -> list[str]:
    """The adapters under ``root/adapters`` (folders with an ``adapter_config.json``; a hidden
    or ``.new`` / ``.old`` folder is an interrupted extraction's leftover, never an adapter)."""
    folder = Path(root) / ADAPTERS_DIRNAME
    return sorted(p.name for p in folder.iterdir()
                  if (p / "adapter_config.json").is_file() and not p.name.startswith(".")
                  and not p.name.endswith((".new", ".old"))) if folder.is_dir() else []


def declared_base(root: Path, names: list[str]) -> str | None:
    """The base variant extracted adapters were computed against (their
    ``extraction_report.json``), or None when none says (hand-trained adapters, the Nano's).
    Adapters that disagree about their base are an error: they cannot share one LLM."""
    bases = {}
    for name in names:
        path = Path(root) / ADAPTERS_DIRNAME / name / EXTRACTION_REPORT
        if path.is_file():
            try:
                bases[name] = json.loads(path.read_text())["base"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}: unreadable extraction report ({exc})") from None
    if len(set(bases.values())) > 1:
        raise ValueError(f"adapters under {Path(root) / ADAPTERS_DIRNAME} were extracted against "
                         f"different bases {bases}: they cannot share one LLM")
    return next(iter(bases.values()), None)


def adapter_variant(root: Path, name: str, base: str, grids: tuple[str, ...]) -> Variant:
    """The variant record of adapter ``name`` on ``base``: `ADAPTER_DEFAULTS`, then the folder's
    own settings."""
    spec: dict[str, Any] = dict(description=f"LoRA adapter {name} on {base}", resolution_grids=grids)
    spec.update(ADAPTER_DEFAULTS.get(name, {}))
    spec.update(_manifest_variants(Path(root)).get(name, {}))
    return Variant.model_validate(dict(spec, name=name, llm=AdapterWeights(
        base=base, path=f"{ADAPTERS_DIRNAME}/{name}")))


class AdapterHost:
    """peft LoRA adapters on one base agent, switched per turn.

    ``PeftModel.from_pretrained`` / ``load_adapter`` inject the LoRA layers *into* the base
    agent's LLM modules in place, so ``agent.llm`` stays the plain HF Llama every code path uses
    (``get_decoder``, ``get_input_embeddings``); the peft wrapper is kept here only to switch:
    ``activate(name)`` sets that adapter and enables the LoRA layers, ``activate(None)``
    disables them (the base). Switching is a flag flip, no weights move. The active adapter is
    runtime-wide state: set it and use the agent under the same ``lock("llm")``.
    """

    def __init__(self, agent: Any, base_variant: str, root: Path):
        self.agent = agent
        self.base_variant = base_variant
        self.root = root
        self.loaded: dict[str, str] = {}   # adapter name -> folder
        self.active: str | None = None
        self._peft: Any = None
        # An extracted adapter's own agent tensors (resamplers, patch_pos_embed: small, kept
        # resident per adapter) and the base's values of every tensor some adapter replaces;
        # `_swapped` is the adapter whose tensors are in the agent now.
        self.agent_weights: dict[str, dict[str, Any]] = {}
        self._base_agent_weights: dict[str, Any] = {}
        self._swapped: str | None = None

    def load(self, name: str, path: str | Path) -> None:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.agent.llm, str(path),
                                                       adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.loaded[name] = str(path)
        self._load_agent_weights(name, Path(path))
        self.activate(self.active)  # loading never changes which adapter runs
        self.agent.eval()

    def adapter_for(self, spec: Variant) -> str | None | bool:
        """The adapter ``spec`` runs with: a name, None (the base, adapters off) or False (not a
        variant of this base). An adapter variant registered by a plugin (any folder under the
        model root) is loaded on first use."""
        if isinstance(spec.llm, AdapterWeights):
            if spec.llm.base not in (self.base_variant, BASE_ALIAS):
                return False
            if spec.name not in self.loaded:
                self.load(spec.name, self.root / spec.llm.path)
            return spec.name
        if spec.name in (self.base_variant, BASE_ALIAS):
            return None
        return False

    def _load_agent_weights(self, name: str, folder: Path) -> None:
        """Keep ``folder/agent.safetensors`` (if any) resident, on each tensor's device and dtype,
        and the base's values of those tensors, so switching is a copy, not a read."""
        if not (folder / AGENT_WEIGHTS).is_file():
            return
        import torch
        from safetensors.torch import load_file

        own = dict(self.agent.state_dict(keep_vars=True))
        loaded = load_file(str(folder / AGENT_WEIGHTS))
        unknown = sorted(set(loaded) - set(own))
        mismatched = sorted(k for k in set(loaded) & set(own) if loaded[k].shape != own[k].shape)
        if unknown or mismatched:
            raise ValueError(f"{folder / AGENT_WEIGHTS}: tensors the agent does not have "
                             f"{unknown} or of another shape {mismatched}")
        with torch.no_grad():
            if self._swapped is not None:  # record base values from an unswapped agent
                self._swap_agent_weights(None)
            for key in loaded:
                if key not in self._base_agent_weights:
                    self._base_agent_weights[key] = own[key].detach().clone()
        self.agent_weights[name] = {k: v.to(device=own[k].device, dtype=own[k].dtype)
                                    for k, v in loaded.items()}

    def _swap_agent_weights(self, name: str | None) -> None:
        if name == self._swapped:
            return
        import torch

        own = dict(self.agent.state_dict(keep_vars=True))
        target = self.agent_weights.get(name, {}) if name is not None else {}
        with torch.no_grad():
            for key in self.agent_weights.get(self._swapped, {}) if self._swapped else {}:
                if key not in target:
                    own[key].copy_(self._base_agent_weights[key])
            for key, value in target.items():
                own[key].copy_(value)
        self._swapped = name if target else None

    def activate(self, name: str | None) -> None:
        if self.agent_weights or self._swapped is not None:
            self._swap_agent_weights(name)
        if self._peft is None:
            return
        lora = self._peft.base_model
        if name is None:
            lora.disable_adapter_layers()
        else:
            try:
                lora.set_adapter(name, inference_mode=True)
            except TypeError:  # peft < 0.17
                lora.set_adapter(name)
            lora.enable_adapter_layers()
        self.active = name


def _manifest_variants(root: Path) -> dict[str, dict[str, Any]]:
    """Per-adapter variant settings from ``nano_manifest.json``'s optional ``variants`` mapping
    (``{"tryon": {"detokenizer_stage": 2, "resolution_grids": ["1x1"], "roles": ["tryon"]}}``)."""
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    variants = data.get("variants") if isinstance(data, dict) else None
    return {k: dict(v) for k, v in variants.items() if isinstance(v, dict)} if isinstance(variants, dict) else {}
