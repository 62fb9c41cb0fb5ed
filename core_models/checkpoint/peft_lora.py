"""peft LoRA training dumps inside the agent file, presented as dense weights.

Whether the released agent file carries ``llm.*`` tensors is unknown (manifests/index.json). If
it is a LoRA training dump (``train_seed_x_sft.py`` + ``zero_to_fp32.py`` write
``llm.base_model.model.<hf name>``), the loader must not need peft nor the training code: the
dump is merged into plain ``ContinuousLVLM`` names, W' = W + scaling * (B @ A), one tensor at a
time as the loader asks for it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from .keys import is_ignored_key
from .reading import CheckpointError, Shape, TensorView, tensor_dtype, tensor_shape

PEFT_PREFIX = "llm.base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_SAVED = re.compile(r"^(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<param>.+)$")


def plan_peft_merge(keys: Iterable[str]) -> tuple[dict[str, tuple], list[str]]:
    """How a peft-wrapped dump maps onto plain ``ContinuousLVLM`` names (pure key logic).

    LoRA pairs ``<m>.lora_A.default.weight`` [r, in] / ``<m>.lora_B.default.weight`` [out, r]
    sit next to the frozen ``<m>.weight`` (peft >= 0.7: ``<m>.base_layer.weight``), RMSNorms as
    ``<m>.modules_to_save.default.weight`` (trained, used) + ``<m>.original_module.weight``
    (frozen copy, dropped), embeddings / lm_head in full. Returns ``({target: recipe}, dropped)``
    with recipes ``("copy", key)`` and ``("merge", base_key_or_None, a_key, b_key)``.
    """
    plan: dict[str, tuple] = {}
    dropped: list[str] = []
    lora: dict[str, dict[str, str]] = defaultdict(dict)
    plain: dict[str, str] = {}
    adapters = set()
    for key in keys:
        if is_ignored_key(key):
            dropped.append(key)
            continue
        if not key.startswith(PEFT_PREFIX):
            plan[key] = ("copy", key)
            continue
        inner = key[len(PEFT_PREFIX):]
        if m := _LORA.match(inner):
            lora[m["module"]][m["ab"]] = key
            adapters.add(m["adapter"])
        elif m := _SAVED.match(inner):
            plan[f"llm.{m['module']}.{m['param']}"] = ("copy", key)
            adapters.add(m["adapter"])
        elif ".original_module." in inner:
            dropped.append(key)
        elif ".lora_embedding_" in inner or ".lora_magnitude" in inner:
            raise CheckpointError(f"unsupported peft tensor {key!r}: only LoRA on Linear layers "
                                  f"(the SEED-X training setup) can be merged")
        else:
            plain["llm." + inner.replace(".base_layer.", ".")] = key
    if len(adapters) > 1:
        raise CheckpointError(f"peft dump holds several adapters {sorted(adapters)}; merge one first")
    for module, ab in lora.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"peft dump: LoRA module {module!r} lacks lora_{({'A', 'B'} - set(ab)).pop()}")
        target = f"llm.{module}.weight"
        plan[target] = ("merge", plain.pop(target, None), ab["A"], ab["B"])
    plan.update({target: ("copy", key) for target, key in plain.items()})
    return plan, dropped


class PeftLoraMergedView(TensorView):
    """A peft LoRA dump presented as dense ``ContinuousLVLM`` weights: W' = W + s * (B @ A).

    The merge happens lazily per tensor, in float32, then returns the base dtype. ``scaling`` is
    peft's ``lora_alpha / r``; the dump does not record it, and the SEED-X config
    (``llm_seed_x_lora.yaml``: r = alpha = 32) gives 1.0. If the dump lacks a LoRA module's base
    weight, the delta is added to the weight already loaded in ``model`` (from the llm folder,
    which must then be the base the LoRA was trained on); that weight must be materialised (not
    on meta / disk), else a `CheckpointError` says so.
    """

    def __init__(self, state_dict: Mapping[str, torch.Tensor], scaling: float = 1.0,
                 model: nn.Module | None = None):
        self._sd, self.scaling, self._model = state_dict, scaling, model
        self.plan, self.dropped = plan_peft_merge(state_dict.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.plan)

    def __len__(self) -> int:
        return len(self.plan)

    def shape(self, key: str) -> Shape:
        recipe = self.plan[key]
        if recipe[0] == "copy":
            return tensor_shape(self._sd, recipe[1])
        return (tensor_shape(self._sd, recipe[3])[0], tensor_shape(self._sd, recipe[2])[1])

    def dtype(self, key: str) -> torch.dtype:
        recipe = self.plan[key]
        if recipe[0] == "copy":
            return tensor_dtype(self._sd, recipe[1])
        if recipe[1] is not None:
            return tensor_dtype(self._sd, recipe[1])
        return self[key].dtype

    def __getitem__(self, key: str) -> torch.Tensor:
        recipe = self.plan[key]
        if recipe[0] == "copy":
            return self._sd[recipe[1]]
        _, base_key, a_key, b_key = recipe
        if base_key is not None:
            base = self._sd[base_key]
        else:
            base = self._model.get_parameter(key) if self._model is not None else None
            if base is None or base.device.type == "meta":
                raise CheckpointError(
                    f"cannot merge LoRA into {key}: the dump has no base weight and the model's "
                    f"weight is not loaded (load the llm folder first, not offloaded to disk)")
            base = base.detach()
        a, b = self._sd[a_key].float(), self._sd[b_key].float()
        merged = base.float().to(a.device) + self.scaling * (b @ a)
        return merged.to(base.dtype)
