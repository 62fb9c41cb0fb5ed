"""Streaming a checkpoint into a model built on the ``meta`` device, one tensor at a time.

The release's LLM alone is 52 GB of float32. `load_into_model` fills a model built under
`empty_init` tensor by tensor with accelerate's ``set_module_tensor_to_device``, in the requested
dtype, on the device the device map assigns, releasing each shard before the next is read: peak
host memory is about one shard plus the model (pickled shards are memory-mapped, so even "one
shard" is only the pages actually touched). Each file is checked against its own expected key
set from headers first, so a mismatch is reported before the first byte of the load is spent.

Two things a meta-built model loses are restored here: tied weights (accelerate re-creates
parameters on assignment, so ``lm_head`` and the embedding stop being one tensor) and
non-persistent buffers (rotary ``inv_freq`` is never stored in checkpoints).
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .device_maps import DeviceMap, device_for, dispatch_if_needed, resolve_device_map
from .keys import KeyMap, check_state_dict_keys, identity_key_map
from .reading import (CheckpointError, CheckpointMismatchError, PathLike, find_weights,
                      iter_checkpoint_shards, list_shards, read_manifest, tensor_shape)

logger = logging.getLogger(__name__)


def empty_init() -> contextlib.AbstractContextManager:
    """Build modules with parameters on ``meta`` but real (CPU) buffers.

    Buffers are kept real on purpose: non-persistent ones (rotary ``inv_freq``) are computed in
    ``__init__`` and never stored in checkpoints, so a buffer created on meta would have no
    source of values. (`load_into_model` still repairs meta rotary buffers, for models built
    with ``torch.device("meta")``.)
    """
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


@dataclass
class LoadReport:
    """What one `load_into_model` call did."""

    label: str
    files: list[Path] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    device_map: dict[str, Any] = field(default_factory=dict)


def load_into_model(model: nn.Module, shards: PathLike | Mapping | Iterable[tuple[Any, Mapping]],
                    dtype: torch.dtype | None, device_map: DeviceMap = None, *,
                    expected_keys: Iterable[str] | None = None, key_map: KeyMap = identity_key_map,
                    label: str | None = None, offload_folder: PathLike | None = None,
                    check_complete: bool = True, precheck: bool = True, dispatch: bool = True,
                    progress: bool | None = None) -> LoadReport:
    """Stream a checkpoint into ``model`` (built on ``meta``, see `empty_init`) tensor by tensor.

    * ``shards``: a checkpoint path (file, index json or folder), an iterable of
      ``(name, state_dict)`` (`iter_checkpoint_shards`), or one state dict.
    * ``dtype``: floating tensors are materialised in this dtype; integer/bool ones keep theirs.
      None keeps each tensor's stored dtype; callers loading the LLM must pass one (the release
      stores 52 GB of float32; see `SeedXStack.from_pretrained`).
    * ``device_map``: see `resolve_device_map`. ``"disk"`` entries are written with accelerate's
      ``offload_weight`` into ``offload_folder`` and the model is then dispatched with
      ``accelerate.dispatch_model`` (hooks load them per forward); so is a map spanning several
      devices, so activations follow the weights.
    * ``expected_keys``: the model names this file must provide exactly (default: the whole
      ``state_dict``). ``key_map`` renames checkpoint keys (None = ignore; rotary ``inv_freq`` is
      always ignored). Anything missing, unexpected or mis-shaped raises
      `CheckpointMismatchError`; with a path and ``precheck`` the whole checkpoint is checked
      from headers before any tensor is read.
    * ``check_complete``: afterwards no parameter of the model may remain on ``meta``; pass False
      (and ``dispatch=False``) when another file completes the model later (llm folder, then agent
      file), then call `assert_materialised` and `dispatch_if_needed` yourself.

    Non-persistent buffers are moved to their device; rotary buffers left on ``meta`` are
    recomputed. Tied parameters are re-tied. Each shard is released before the next is read.
    """
    from accelerate.utils import offload_weight, save_offload_index, set_module_tensor_to_device
    from tqdm.auto import tqdm

    targets = model.state_dict(keep_vars=True)
    expected = set(targets) if expected_keys is None else set(expected_keys)
    unknown = sorted(expected - set(targets))
    if unknown:
        raise ValueError(f"expected_keys names tensors the model does not have: {unknown[:10]}")
    expected_shapes = {k: tuple(targets[k].shape) for k in expected}
    groups = _alias_groups(model)
    alias_of = {n: g for g in groups for n in g}
    dmap = resolve_device_map(model, device_map, dtype)
    key_filter = None if key_map is identity_key_map else (lambda k: key_map(k) is not None)
    shard_iter, files, path = _as_shard_iter(shards, key_filter)
    entry = find_weights(path) if path is not None else None
    if label is None:
        label = str(entry or path) if path is not None else type(model).__name__
    elif entry is not None and entry != Path(path):
        label = f"{label} ({entry.name})"  # errors name the file, not just its folder
    report = LoadReport(label=label, files=list(files or []), device_map=dmap)

    if precheck and path is not None:
        found = read_manifest(path, key_filter=key_filter)
        # A tied alias provides its partner: accept either name of a group.
        present = {key_map(k) for k in found}
        relaxed = {k: s for k, s in expected_shapes.items()
                   if k in present or not any(a in present for a in alias_of.get(k, []))}
        check_state_dict_keys(found, relaxed, label, key_map)

    offload_index: dict | None = None
    if any(d == "disk" for d in dmap.values()):
        if offload_folder is None:
            raise ValueError("device_map sends weights to 'disk': pass offload_folder")
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        offload_index = {}

    loaded: set[str] = set()
    bar = tqdm(total=None, unit="tensor", desc=f"loading {Path(label).name}", disable=progress is False
               if progress is not None else None, leave=False)
    for shard_name, state_dict in shard_iter:
        if files is None:
            report.files.append(Path(str(shard_name)))
        bar.set_postfix_str(Path(str(shard_name)).name)
        plan, unexpected, mismatched = [], [], []
        for raw in state_dict:
            key = key_map(raw)
            if key is None:
                report.ignored.append(raw)
                continue
            if key not in expected:
                unexpected.append(raw if key == raw else f"{raw} (as {key})")
                continue
            shape = tensor_shape(state_dict, raw)
            if shape != expected_shapes[key]:
                mismatched.append((key, shape, expected_shapes[key]))
                continue
            plan.append((key, raw))
        if unexpected or mismatched:
            raise CheckpointMismatchError(label, (), unexpected, mismatched,
                                          note=f"found while reading {shard_name}; later shards not read")
        for key, raw in plan:
            if key in loaded:
                warnings.warn(f"{label}: {key} appears in several shards; the last one wins")
            value = state_dict[raw]
            target_dtype = dtype if (dtype is not None and value.is_floating_point()) else value.dtype
            device = device_for(key, dmap)
            if device == "disk":
                offload_index = offload_weight(value.to(target_dtype), key, str(offload_folder), offload_index)
            else:
                set_module_tensor_to_device(model, key, device, value=value, dtype=target_dtype,
                                            clear_cache=False)
            loaded.add(key)
            del value
            bar.update()
        del state_dict, plan
    bar.close()

    satisfied = set(loaded)
    for key in loaded:
        satisfied.update(alias_of.get(key, []))
    missing = sorted(expected - satisfied)
    if missing:
        raise CheckpointMismatchError(label, missing, (), ())
    _retie(model, groups)

    unrepaired = _repair_meta_buffers(model)
    if unrepaired:
        raise CheckpointError(f"{label}: buffers {unrepaired} are on meta and cannot be recomputed; "
                              f"build the model under checkpoint.empty_init() so buffers stay real")
    for name, buf in list(model.named_buffers()):
        device = device_for(name, dmap)
        device = torch.device("cpu") if device == "disk" else device
        if buf.device != torch.device(device):
            set_module_tensor_to_device(model, name, device, clear_cache=False)  # keeps buffer dtype

    if offload_index is not None:
        save_offload_index(offload_index, str(offload_folder))
    if check_complete:
        assert_materialised(model, dmap, label)
    if dispatch:
        dispatch_if_needed(model, dmap, offload_folder)
    report.loaded = sorted(loaded)
    logger.info("loaded %d tensors from %s (%d ignored)", len(loaded), label, len(report.ignored))
    return report


def assert_materialised(model: nn.Module, device_map: Mapping[str, Any], label: str) -> None:
    """Every parameter has a value: none is left on ``meta`` except those offloaded to disk."""
    on_meta = [n for n, p in model.named_parameters()
               if p.device.type == "meta" and device_for(n, device_map) != "disk"]
    if on_meta:
        raise CheckpointError(f"{label}: after loading, {len(on_meta)} parameters were never "
                              f"given values (still on meta): {on_meta[:20]}")


def _as_shard_iter(shards: Any, key_filter: Callable[[str], bool] | None = None
                   ) -> tuple[Iterable[tuple[Any, Mapping]], list[Path] | None, PathLike | None]:
    if isinstance(shards, (str, os.PathLike)):
        return iter_checkpoint_shards(shards, key_filter=key_filter), list_shards(shards), shards
    if isinstance(shards, Mapping):
        return [("<state dict>", shards)], None, None
    return shards, None, None


def _alias_groups(model: nn.Module) -> list[list[str]]:
    """Names that are one tensor (tied weights): loading one name must serve all of them.

    Two sources: parameters that already are the same object, and transformers'
    ``all_tied_weights_keys`` (``{target: source}``), because accelerate's ``init_empty_weights``
    re-creates parameters on assignment, so a model built under it has lost the identity.
    """
    names = set(model.state_dict(keep_vars=True))
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        if a in names and b in names:
            parent[find(a)] = find(b)

    by_id: dict[int, list[str]] = defaultdict(list)
    for name, param in model.named_parameters(remove_duplicate=False):
        by_id[id(param)].append(name)
    for group in by_id.values():
        for other in group[1:]:
            union(other, group[0])
    for prefix, module in model.named_modules():
        tied = getattr(module, "all_tied_weights_keys", None)
        if isinstance(tied, Mapping):
            dot = f"{prefix}." if prefix else ""
            for target, source in tied.items():
                union(dot + target, dot + source)
    groups: dict[str, list[str]] = defaultdict(list)
    for name in parent:
        groups[find(name)].append(name)
    for root, members in groups.items():
        if root not in members:
            members.append(root)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _split_name(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, leaf = name.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), leaf


def _retie(model: nn.Module, groups: list[list[str]]) -> None:
    for names in groups:
        tensors = [(n, _split_name(model, n)) for n in names]
        source = next((getattr(mod, leaf) for _, (mod, leaf) in tensors
                       if getattr(mod, leaf).device.type != "meta"), None)
        if source is None:
            continue
        for _, (mod, leaf) in tensors:
            mod._parameters[leaf] = source


def _repair_meta_buffers(model: nn.Module) -> list[str]:
    """Recompute non-persistent buffers left on ``meta``; returns the names that could not be.

    Rotary embeddings (transformers' ``*RotaryEmbedding``: ``inv_freq``, ``original_inv_freq``,
    ``attention_scaling``) depend only on their config, so a fresh CPU instance supplies them.
    """
    unrepaired = []
    for module_name, module in model.named_modules():
        meta = [n for n, b in module._buffers.items() if b is not None and b.device.type == "meta"]
        if not meta:
            continue
        if "RotaryEmbedding" in type(module).__name__ and hasattr(module, "config"):
            with torch.device("cpu"):
                fresh = type(module)(module.config)
            for name, buf in fresh._buffers.items():
                module._buffers[name] = buf
            if hasattr(fresh, "attention_scaling"):
                module.attention_scaling = fresh.attention_scaling
            continue
        unrepaired += [f"{module_name}.{n}" if module_name else n for n in meta]
    return unrepaired
