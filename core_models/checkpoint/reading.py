"""Reading checkpoint files without ever unpickling arbitrary objects.

The official code loads every file with ``torch.load`` (unpickling arbitrary objects). Here
``.bin``/``.pt`` go through ``torch.load(weights_only=True, mmap=True)`` and ``.safetensors``
through ``safe_open``; a file that ``weights_only`` refuses is an error, never a reason to fall
back to unsafe loading. Every failure is a `CheckpointError` that names the file and the reason,
and key mismatches are listed all at once (`CheckpointMismatchError`), because fixing a
conversion bug one key per run is miserable.

Files are found by the HF / diffusers naming conventions (`find_weights`); an index json
(``*.index.json``) makes a sharded checkpoint, whose shards are read one at a time
(`iter_checkpoint_shards`) so that peak memory stays at about one shard.

Symbolic links are followed wherever they point: a Hugging Face cache is made of them
(``snapshots/<rev>/<file> -> ../../blobs/<hash>``). Each link is logged once, with the file it
resolves to, so a load that reads an unexpected blob can be traced; a dangling link (an
interrupted download, a pruned cache) is a `CheckpointError` naming the link (`followed`).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]
Shape = tuple[int, ...]

# Weight files looked for inside a folder, in order of preference: safetensors (written by
# `convert_to_safetensors` or `save_pretrained`) before the pickled originals.
WEIGHT_FILE_NAMES = (
    "model.safetensors.index.json", "model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin.index.json", "pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json", "diffusion_pytorch_model.bin",
)
FP16_WEIGHT_FILE_NAMES = (
    "diffusion_pytorch_model.fp16.safetensors.index.json", "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# ``<base>-00001-of-00003.safetensors``: one shard of several is never a whole checkpoint, even
# when an interrupted write left it alone in its folder.
SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.[^.]+$")

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint file or folder cannot be used. The message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys do not match what its file must contain.

    ``missing``, ``unexpected`` and ``mismatched`` (``(key, checkpoint_shape, model_shape)``) hold
    the full lists; the message shows them all at once (capped for readability).
    """

    MAX_LISTED = 30

    def __init__(self, label: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Iterable[tuple[str, Shape, Shape]] = (), note: str = ""):
        self.label = label
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        super().__init__(self._format(note))

    def _format(self, note: str) -> str:
        lines = [f"checkpoint {self.label} does not match the model"
                 f" ({len(self.missing)} missing, {len(self.unexpected)} unexpected,"
                 f" {len(self.mismatched)} shape-mismatched keys)"]

        def listing(title: str, items: list[str]) -> None:
            if not items:
                return
            lines.append(f"  {title} ({len(items)}):")
            lines.extend(f"    {item}" for item in items[: self.MAX_LISTED])
            if len(items) > self.MAX_LISTED:
                lines.append(f"    ... and {len(items) - self.MAX_LISTED} more")

        listing("missing keys", self.missing)
        listing("unexpected keys", self.unexpected)
        listing("shape mismatches (key: checkpoint shape vs model shape)",
                [f"{k}: checkpoint {list(a)} vs model {list(b)}" for k, a, b in self.mismatched])
        if note:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Symbolic links
# ------------------------------------------------------------------------------------------------
_logged_links: set[tuple[str, str]] = set()
_logged_links_guard = threading.Lock()


def followed(path: PathLike) -> Path:
    """``path`` itself; when it is a symbolic link, first checked and logged.

    The link is logged (INFO, once per link and target) as ``link -> resolved target``; a link
    whose target does not exist, or a loop of links, raises `CheckpointError` naming the link,
    because "no checkpoint here" would send the user looking for a file that is there.
    """
    path = Path(path)
    if not path.is_symlink():
        return path
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: dangling symlink to {os.readlink(path)} (resolves to {path.resolve()}, "
            "which does not exist; an interrupted download or a pruned cache?)") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a loop, before Python 3.13
        raise CheckpointError(f"{path}: symlink cannot be followed: {exc}") from None
    with _logged_links_guard:
        first = (str(path), str(target)) not in _logged_links
        _logged_links.add((str(path), str(target)))
    if first:
        logger.info("following symlink %s -> %s", path, target)
    return path


def _is_file(path: Path) -> bool:
    """``path.is_file()``, except that a broken symlink raises instead of reading as absent."""
    return followed(path).is_file()


# ------------------------------------------------------------------------------------------------
# Locating weight files
# ------------------------------------------------------------------------------------------------
def find_weights(path: PathLike, prefer_fp16: bool = False) -> Path | None:
    """The weights entry point of ``path``: the file itself, or inside a folder the index json or
    single weight file named by the HF / diffusers conventions (safetensors first).

    ``prefer_fp16`` picks diffusers' ``*.fp16.*`` variant when present (useful when the target
    dtype is float16 anyway: half the bytes to read). A folder holding exactly one weight file of
    another name (``QwenViT/qwen_vit_G.pt``) is accepted too, unless it is named as one shard of
    several. Returns None when nothing is found; a dangling symlink where weights would be
    raises `CheckpointError` naming it.
    """
    path = Path(path)
    if _is_file(path):
        return path
    if not path.is_dir():
        return None
    names = (FP16_WEIGHT_FILE_NAMES + WEIGHT_FILE_NAMES) if prefer_fp16 else (
        WEIGHT_FILE_NAMES + FP16_WEIGHT_FILE_NAMES)
    for name in names:
        if _is_file(path / name):
            return path / name
    files = [p for p in path.iterdir()
             if not p.name.startswith(".") and not SHARD_NAME.search(p.name)
             and (_is_file(p) if p.name.endswith(WEIGHT_SUFFIXES + (".json",)) else p.is_file())]
    for match in (lambda p: p.name.endswith(".safetensors.index.json"),
                  lambda p: p.suffix == ".safetensors",
                  lambda p: p.name.endswith(".index.json"),
                  lambda p: p.suffix in (".pt", ".pth", ".bin")):
        singles = sorted(p for p in files if match(p))
        if len(singles) == 1:
            return singles[0]
    return None


def read_weight_map(index_file: PathLike) -> dict[str, Path]:
    """``{key: shard path}`` from an HF ``*.index.json``; every listed shard must exist."""
    index_file = followed(index_file)
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file}: not a readable checkpoint index ({exc})") from exc
    shards = {name: index_file.parent / name for name in set(weight_map.values())}
    absent = sorted(str(p) for p in shards.values() if not _is_file(p))
    if absent:
        raise CheckpointError(f"{index_file}: lists shard files that do not exist: {absent}")
    return {key: shards[name] for key, name in weight_map.items()}


def list_shards(path: PathLike, prefer_fp16: bool = False) -> list[Path]:
    """The weight files of a checkpoint (file, index json, or folder), in shard order."""
    entry = find_weights(path, prefer_fp16=prefer_fp16)
    if entry is None:
        raise CheckpointError(
            f"no checkpoint at {path}: looked for the file itself or, in the folder, one of "
            f"{', '.join(WEIGHT_FILE_NAMES)} (or a single *.safetensors / *.pt / *.bin file)")
    if entry.name.endswith(".index.json"):
        return sorted(set(read_weight_map(entry).values()))
    return [entry]


# ------------------------------------------------------------------------------------------------
# Reading one file
# ------------------------------------------------------------------------------------------------
class TensorView(Mapping):
    """A read-only ``{key: tensor}`` mapping that knows shapes and dtypes without reading data.

    Shard checks and shard planning look at every key of a 52 GB checkpoint before the first
    tensor is read; views answer them from headers.
    """

    def shape(self, key: str) -> Shape:
        raise NotImplementedError

    def dtype(self, key: str) -> torch.dtype:
        raise NotImplementedError


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


class SafetensorsFile(TensorView):
    """A lazy view of one safetensors file: tensors are read on access, one at a time."""

    def __init__(self, path: PathLike):
        from safetensors import safe_open

        self.path = Path(path)
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._handle.keys())
        except Exception as exc:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"{self.path}: cannot read safetensors file "
                                  f"(truncated or corrupt?): {exc}") from exc

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._keys:
            raise KeyError(key)
        try:
            return self._handle.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"{self.path}: cannot read tensor {key!r}: {exc}") from exc

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> Shape:
        return tuple(self._handle.get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._handle.get_slice(key).get_dtype()
        if name not in _SAFETENSORS_DTYPES:
            return self[key].dtype
        return _SAFETENSORS_DTYPES[name]

    def metadata(self) -> dict[str, str]:
        return self._handle.metadata() or {}


def _torch_load(path: Path, mmap: bool) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_state_dict_file(path: PathLike, *, lazy: bool = True) -> Mapping[str, torch.Tensor]:
    """One checkpoint file as ``{key: tensor}``, without ever unpickling arbitrary objects.

    ``.safetensors`` opens lazily (`SafetensorsFile`; ``lazy=False`` reads everything).
    ``.bin``/``.pt``/``.pth`` go through ``torch.load(weights_only=True, mmap=True)``: the pickle is
    parsed, tensor data stay memory-mapped until touched. A pickle that ``weights_only`` refuses
    (it references some class other than tensors/containers) raises `CheckpointError` and is
    *not* retried unsafely: convert such a file in an environment you trust. Truncated or corrupt
    files raise `CheckpointError` naming the file. A ``{"state_dict"|"module"|"model": {...}}``
    wrapper (DeepSpeed / Lightning style) is unwrapped.
    """
    path = followed(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    if path.suffix == ".safetensors":
        sd = SafetensorsFile(path)
        return sd if lazy else {k: sd[k] for k in sd}
    try:
        try:
            obj = _torch_load(path, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (pre-zip) serialization cannot be mmapped
                raise
            obj = _torch_load(path, mmap=False)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            detail = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported" in ln),
                          "Weights only load failed")
            raise CheckpointError(
                f"{path}: torch.load(weights_only=True) refuses this pickle: it references objects "
                f"other than tensors and plain containers. It is not loaded unsafely (that would "
                f"execute arbitrary code). Re-save its state dict as safetensors in a trusted "
                f"environment. torch said: {detail}") from exc
        raise CheckpointError(f"{path}: corrupt pickle checkpoint: {exc}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only_key, inner), = obj.items()
        if only_key in ("state_dict", "module", "model") and isinstance(inner, Mapping):
            obj = inner
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat {{name: tensor}} state dict, "
                              f"got {type(obj).__name__}")
    return obj


def tensor_shape(state_dict: Mapping[str, torch.Tensor], key: str) -> Shape:
    """Shape of one entry without reading its data when the mapping allows it."""
    if isinstance(state_dict, TensorView):
        return state_dict.shape(key)
    return tuple(state_dict[key].shape)


def tensor_dtype(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.dtype:
    """Dtype of one entry without reading its data when the mapping allows it."""
    if isinstance(state_dict, TensorView):
        return state_dict.dtype(key)
    return state_dict[key].dtype


# ------------------------------------------------------------------------------------------------
# Reading a whole checkpoint
# ------------------------------------------------------------------------------------------------
def iter_checkpoint_shards(path: PathLike, *, key_filter: Callable[[str], bool] | None = None,
                           prefer_fp16: bool = False) -> Iterator[tuple[Path, Mapping[str, torch.Tensor]]]:
    """Yield ``(shard_path, state_dict)`` one shard at a time, following the index json if any.

    The generator drops its own reference before reading the next shard; a consumer keeps peak
    memory at one shard by deleting its reference too (``del state_dict`` at the end of the loop
    body), as `load_into_model` does. With an index, ``key_filter`` skips shards that hold no
    wanted key without opening them (the Qwen-VL-Chat ViT lives in 2 of its 10 shards).
    """
    entry = find_weights(path, prefer_fp16=prefer_fp16)
    if entry is None:
        list_shards(path)  # raises the descriptive error
    shards = list_shards(entry)
    if key_filter is not None and entry.name.endswith(".index.json"):
        wanted = {shard for key, shard in read_weight_map(entry).items() if key_filter(key)}
        shards = [s for s in shards if s in wanted]
    for shard in shards:
        state_dict = load_state_dict_file(shard)
        yield shard, state_dict
        del state_dict


class CheckpointView(TensorView):
    """All shards of a checkpoint as one lazy ``{key: tensor}`` mapping.

    For files whose tensors must be combined across shards (a LoRA pair split over two shards)
    and for the converter, which plans its output shards before writing any. Safetensors shards
    are read per tensor and pickles stay memory-mapped, so holding every shard open costs
    address space, not memory. ``key_filter`` skips shards without a wanted key, as
    `iter_checkpoint_shards` does.
    """

    def __init__(self, path: PathLike, *, key_filter: Callable[[str], bool] | None = None):
        self._where: dict[str, Mapping[str, torch.Tensor]] = {}
        for _, state_dict in iter_checkpoint_shards(path, key_filter=key_filter):
            for key in state_dict:
                self._where[key] = state_dict

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._where[key][key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def shape(self, key: str) -> Shape:
        return tensor_shape(self._where[key], key)

    def dtype(self, key: str) -> torch.dtype:
        return tensor_dtype(self._where[key], key)


def checkpoint_keys(path: PathLike) -> list[str]:
    """All keys of a checkpoint, from the index json when there is one (nothing else is read)."""
    entry = find_weights(path)
    if entry is not None and entry.name.endswith(".index.json"):
        return list(read_weight_map(entry))
    keys = []
    for _, state_dict in iter_checkpoint_shards(path):
        keys += list(state_dict)
        del state_dict
    return keys


def read_manifest(path: PathLike, *, key_filter: Callable[[str], bool] | None = None,
                  prefer_fp16: bool = False) -> dict[str, Shape]:
    """``{key: shape}`` of a whole checkpoint, reading headers / pickles only (no tensor data).

    Used to check a checkpoint completely before the first byte of a 52 GB load is spent.
    """
    manifest: dict[str, Shape] = {}
    for _, sd in iter_checkpoint_shards(path, key_filter=key_filter, prefer_fp16=prefer_fp16):
        for key in sd:
            manifest[key] = tensor_shape(sd, key)
        del sd
    return manifest
