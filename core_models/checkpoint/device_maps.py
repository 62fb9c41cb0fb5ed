"""Device maps: where each tensor of a model goes, and the hooks a spread-out model needs.

A device map here is what accelerate's ``infer_auto_device_map`` produces, ``{module prefix:
device}`` with ``""`` for the whole model and ``"disk"`` for offloaded weights, plus the short
forms a caller types (one device, ``"auto"``, None for torch's default device, so that no device
is hard-coded in core_models). The loader resolves the map once and asks `device_for` per tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import nn

from .reading import PathLike

DeviceMap = Union[str, int, torch.device, dict[str, Union[str, int, torch.device]], None]


def resolve_device_map(model: nn.Module, device_map: DeviceMap, dtype: torch.dtype | None = None,
                       max_memory: dict | None = None) -> dict[str, Any]:
    """Normalise a device or device map into ``{module prefix: device}``.

    Accepted: None (torch's default device, so nothing is hard-coded here), a device (string,
    index or ``torch.device``), ``"auto"`` (accelerate's ``infer_auto_device_map`` over the
    model's ``_no_split_modules``, may yield ``"cpu"``/``"disk"``), or a dict as
    ``infer_auto_device_map`` produces (``""`` = the whole model; values may be ``"disk"``).
    """
    if device_map is None:
        return {"": torch.get_default_device()}
    if isinstance(device_map, (int, torch.device)) or (isinstance(device_map, str) and device_map != "auto"):
        return {"": device_map if device_map == "disk" else torch.device(device_map)}
    if device_map == "auto":
        from accelerate import infer_auto_device_map

        no_split = sorted({cls for m in model.modules() for cls in (getattr(m, "_no_split_modules", None) or [])})
        return dict(infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split,
                                          dtype=dtype))
    if not isinstance(device_map, Mapping):
        raise TypeError(f"device_map must be a device, 'auto' or a dict, got {type(device_map).__name__}")
    return dict(device_map)


def device_for(name: str, device_map: Mapping[str, Any]) -> Any:
    """The device of tensor ``name``: the longest module prefix of the map that contains it."""
    best, best_len = None, -1
    for prefix, device in device_map.items():
        if (prefix == "" or name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = device, len(prefix)
    if best_len < 0:
        raise ValueError(f"device_map does not place {name!r} (keys: {sorted(device_map)})")
    return best


def dispatch_if_needed(model: nn.Module, device_map: Mapping[str, Any],
                       offload_folder: PathLike | None = None) -> None:
    """Attach accelerate's hooks when the map spans several devices or offloads to disk.

    One device needs no hooks: everything already sits there. Several devices (or ``"cpu"``
    beside GPUs, or ``"disk"``) need ``dispatch_model`` so activations move between them and
    offloaded weights are fetched per forward.
    """
    devices = {str(d) for d in device_map.values()}
    if len(devices) > 1 or "disk" in devices:
        from accelerate import dispatch_model

        dispatch_model(model, device_map=disjoint_device_map(model, device_map),
                       offload_dir=str(offload_folder) if offload_folder else None)


def disjoint_device_map(model: nn.Module, device_map: Mapping[str, Any]) -> dict[str, Any]:
    """``device_map`` rewritten so that no key is a prefix of another, as accelerate expects.

    Our maps may say "everything on cuda:0 (``""``), except these layers"; accelerate's hooks
    would then place the whole model on cuda:0 from the root. So a module holding a more specific
    key is split into its own parameters, buffers and children, recursively.
    """
    out: dict[str, Any] = {}

    def visit(prefix: str, module: nn.Module) -> None:
        dotted = prefix + "." if prefix else ""
        if not any(key.startswith(dotted) and key != prefix for key in device_map if key):
            out[prefix] = device_for(prefix, device_map)  # nothing more specific below: one entry
            return
        for name, _ in module.named_parameters(recurse=False):
            out[dotted + name] = device_for(dotted + name, device_map)
        for name, _ in module.named_buffers(recurse=False):
            out[dotted + name] = device_for(dotted + name, device_map)
        for name, child in module.named_children():
            visit(dotted + name, child)

    visit("", model)
    return out
