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


def adapter_names(root: Path) -> list[str]:
    """The adapters under ``root/adapters`` (folders with an ``adapter_config.json``)."""
    folder = Path(root) / ADAPTERS_DIRNAME
    return sorted(p.name for p in folder.iterdir()
                  if (p / "adapter_config.json").is_file()) if folder.is_dir() else []


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

    def activate(self, name: str | None) -> None:
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
