"""Writing safetensors checkpoints, and converting the pickled release to them once.

Two promises, both because a checkpoint is tens of gigabytes and written rarely:

* **Streaming.** Tensors are consumed one by one and each output shard is written as soon as it
  is full, so memory stays at about one output shard (plus one input shard when converting).
* **Whole or absent.** Every file goes through `core_models.files.atomic_write`, and the entry
  point comes last: the old index is removed before any shard is written, the new one (or the
  single file) is written after all of them. An interrupted write removes the shards it wrote
  and leaves nothing a loader would take for a checkpoint (`find_weights` never takes a lone
  ``-0000k-of-0000n`` shard for a whole one, in case a hard kill left some behind).

Shard names follow the HF convention ``<base>-0000k-of-0000n.safetensors``, which needs ``n``
before the first shard is written: the shards are planned from tensor sizes first (headers only,
no data), then filled.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import torch

from ..files import atomic_write, write_json
from .keys import KeyMap, identity_key_map
from .reading import (WEIGHT_SUFFIXES, CheckpointError, PathLike, find_weights,
                      iter_checkpoint_shards, list_shards, tensor_dtype, tensor_shape)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "5GB"
_METADATA = {"format": "pt"}
T = TypeVar("T")


def parse_size(size: int | str) -> int:
    """``"5GB"`` / ``"500MiB"`` / int -> bytes (decimal units for B/KB/MB/GB, binary for *iB)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?i?B)?\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r}")
    unit = (m[2] or "B").upper()
    factor = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m[1]) * factor)


def save_state_dict(tensors: Mapping[str, torch.Tensor], folder: PathLike, *,
                    base_name: str = "model", max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                    dtype: torch.dtype | None = None, progress: bool | None = None) -> Path:
    """Write tensors as ``<base>.safetensors`` or ``<base>-0000k-of-0000n.safetensors`` + index.

    ``tensors`` may be lazy (a `SafetensorsFile`, a `CheckpointView`): sizes are read from
    headers and each tensor is read once, when its shard is filled. ``dtype`` casts floating
    tensors. Returns the index json (several shards) or the single file.
    """
    sizes = [(key, stored_nbytes(tensors, key, dtype)) for key in tensors]
    return _write_planned(sizes, ((key, tensors[key]) for key in tensors), Path(folder),
                          base_name=base_name, max_shard_size=max_shard_size, dtype=dtype,
                          progress=progress)


def convert_to_safetensors(src: PathLike, dst: PathLike, dtype: torch.dtype | None = None,
                           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, *,
                           key_map: KeyMap = identity_key_map, base_name: str | None = None,
                           copy_other_files: bool = True, progress: bool | None = None) -> Path:
    """Rewrite a pickled checkpoint (LLM shards + index, agent / de-tokenizer ``.bin``, Qwen ViT
    ``.pt``) as safetensors in ``dst``, one input shard at a time. Run it once; later loads
    memory-map safetensors and unpickle nothing.

    ``dtype`` casts floating tensors (e.g. bf16 halves the 52 GB fp32 LLM); ``key_map`` renames
    or drops keys, e.g. ``qwen_visual_key_map`` turns the ``Qwen-VL-Chat`` folder into the ViT
    file (only the shards holding ``transformer.visual.*`` are read). Non-weight files of a source
    folder (``config.json``, ``generation_config.json``, ...) are copied alongside.
    ``dst`` may be a pickled ``src``'s own folder: `find_weights` then prefers the new
    safetensors. (A safetensors source cannot be rewritten in place: its shards would be
    overwritten while they are read.)
    """
    src, dst = Path(src), Path(dst)
    entry = find_weights(src)
    if entry is None:
        list_shards(src)  # raises the descriptive error
    if ".safetensors" in entry.name and dst.resolve() == entry.parent.resolve():
        raise CheckpointError(f"{entry} is already safetensors and {dst} is its own folder: "
                              f"converting in place would overwrite the shards being read; "
                              f"pass another destination")
    if base_name is None:
        base_name = "diffusion_pytorch_model" if entry.name.startswith("diffusion_pytorch_model") else "model"
    key_filter = (lambda k: key_map(k) is not None) if key_map is not identity_key_map else None

    def renamed(value: Callable[[Mapping, str], T]) -> Iterator[tuple[str, T]]:
        for _, state_dict in iter_checkpoint_shards(entry, key_filter=key_filter):
            for raw in list(state_dict):
                key = key_map(raw)
                if key is not None:
                    yield key, value(state_dict, raw)
            del state_dict

    dst.mkdir(parents=True, exist_ok=True)
    if copy_other_files and src.is_dir() and src.resolve() != dst.resolve():
        for item in src.iterdir():
            if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES + (".index.json",)):
                with atomic_write(dst / item.name) as tmp:
                    shutil.copy2(item, tmp)
    sizes = list(renamed(lambda sd, raw: stored_nbytes(sd, raw, dtype)))
    out = _write_planned(sizes, renamed(lambda sd, raw: sd[raw]), dst, base_name=base_name,
                         max_shard_size=max_shard_size, dtype=dtype, progress=progress)
    logger.info("converted %s -> %s", src, out)
    return out


def stored_nbytes(state_dict: Mapping[str, torch.Tensor], key: str,
                  dtype: torch.dtype | None = None) -> int:
    """Bytes ``key`` will take once written (cast to ``dtype`` if floating), from its header."""
    stored = tensor_dtype(state_dict, key)
    target = dtype if dtype is not None and stored.is_floating_point else stored
    return math.prod(tensor_shape(state_dict, key)) * target.itemsize


def plan_shards(sizes: Iterable[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    """Consecutive keys grouped greedily: a new shard starts when the next tensor would overflow
    (a tensor larger than ``max_bytes`` gets a shard of its own)."""
    shards: list[list[str]] = []
    current_bytes = 0
    for key, nbytes in sizes:
        if not shards or current_bytes + nbytes > max_bytes:
            shards.append([])
            current_bytes = 0
        shards[-1].append(key)
        current_bytes += nbytes
    return shards


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _write_planned(sizes: list[tuple[str, int]], tensors: Iterable[tuple[str, torch.Tensor]],
                   folder: Path, *, base_name: str, max_shard_size: int | str,
                   dtype: torch.dtype | None, progress: bool | None) -> Path:
    """Fill the shards planned from ``sizes`` with ``tensors`` (same keys, same order)."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    plan = plan_shards(sizes, parse_size(max_shard_size))
    if not plan:
        raise CheckpointError(f"nothing to write into {folder}")
    index_path = folder / f"{base_name}.safetensors.index.json"
    single_path = folder / f"{base_name}.safetensors"
    n = len(plan)
    names = [single_path.name] if n == 1 else [
        f"{base_name}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    if n > 1:
        index_path.unlink(missing_ok=True)  # it may list shards about to be overwritten

    stream = iter(tensors)
    written: list[Path] = []
    bar = tqdm(total=len(sizes), unit="tensor", desc=f"writing {folder.name}", leave=False,
               disable=progress is False if progress is not None else None)
    try:
        for name, keys in zip(names, plan):
            shard, seen = {}, set()
            for expected in keys:
                key, tensor = next(stream)
                if key != expected:
                    raise CheckpointError(f"{folder}: tensors changed order while being written "
                                          f"({key!r} where {expected!r} was planned)")
                shard[key] = _owned(_as_stored(tensor, dtype), seen)
                bar.update()
            with atomic_write(folder / name) as tmp:
                _save_shard(shard, tmp, _METADATA)
            written.append(folder / name)
            del shard
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    finally:
        bar.close()

    if n == 1:
        index_path.unlink(missing_ok=True)  # never leave an old entry point beside the new one
        return single_path
    weight_map = {key: name for name, keys in zip(names, plan) for key in keys}
    write_json(index_path, {"metadata": {"total_size": sum(nbytes for _, nbytes in sizes)},
                            "weight_map": dict(sorted(weight_map.items()))})
    single_path.unlink(missing_ok=True)
    return index_path


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _as_stored(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor


def _owned(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """A contiguous tensor that shares storage with no other one (safetensors refuses aliasing)."""
    tensor = tensor.detach().contiguous()
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    seen.add(tensor.untyped_storage().data_ptr())
    return tensor
