"""Reading the released SEED-X-17B checkpoints: where the files are, what each one must contain,
and how to stream them into a model without ever holding two copies of 52 GB.

The official code loads every file with ``torch.load`` (unpickling arbitrary objects) and then
``load_state_dict(strict=False)`` after *silently dropping* shape-mismatched keys
(``load_zero3_checkpoint``). A port must be stricter, because a silently skipped tensor gives a
model that runs and produces garbage. So here:

* **Paths** (`SeedXPaths`) follow the release convention from one root (``pretrained/`` of the
  official scripts, or a folder of the split per-model HF repos) and each can be overridden.
  A missing component fails once, listing every place that was searched.
* **Reading** never unpickles objects: ``.bin``/``.pt`` go through
  ``torch.load(weights_only=True, mmap=True)``, ``.safetensors`` through ``safe_open``. A file that
  ``weights_only`` refuses is an error, never a reason to fall back to unsafe loading.
* **Checking** is per file: each file is compared with *its own* expected key set (the stage-1
  de-tokenizer holds only the resampler and the UNet's to_k/to_v; the agent file only the
  resamplers and ``patch_pos_embed``), and a mismatch raises `CheckpointMismatchError` listing the
  missing, unexpected and mis-shaped keys together.
* **Loading** (`load_into_model`) fills a model built on the ``meta`` device one tensor at a time
  with accelerate's ``set_module_tensor_to_device``, in the requested dtype, on the device a
  device map assigns, releasing each shard before the next is read. Peak host memory is therefore
  about one shard plus the model (pickled shards are memory-mapped, so even "one shard" is only the
  pages actually touched).
* **Converting** (`convert_to_safetensors`) rewrites the pickled release once into safetensors,
  crash-safely, so later loads skip unpickling altogether.

Key-name conventions handled here (see tests/fixtures/golden/manifests/index.json):
``rotary_emb.inv_freq`` (written by transformers <= 4.30) is ignored everywhere; the ViT can come
from Qwen-VL-Chat shards, whose ``transformer.visual.*`` keys are kept with the prefix stripped;
the agent file may carry extra ``llm.*`` tensors (merged names override the llm folder, a peft LoRA
training dump is merged into dense weights, see `PeftLoraMergedView`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Shape = tuple[int, ...]
KeyMap = Callable[[str], Union[str, None]]
DeviceMap = Union[str, int, torch.device, dict[str, Union[str, int, torch.device]], None]

# Names of the release (§1 of the reference).
VARIANTS = ("seed_x", "seed_x_i", "seed_x_edit")
SPLIT_REPOS = {"seed_x": "seed-x-17b-pretrain", "seed_x_i": "seed-x-17b-instruct",
               "seed_x_edit": "seed-x-17b-edit"}
TOKENIZER_DIRNAME = "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"
SDXL_DIRNAME = "stable-diffusion-xl-base-1.0"
DETOKENIZER_DIRNAMES = ("seed_detokenizer", "seed-x-17b-de-tokenizer")
QWEN_VIT_DIRNAME, QWEN_VIT_STEM = "QwenViT", "qwen_vit_G"
QWEN_VL_CHAT_DIRNAME = "Qwen-VL-Chat"
QWEN_VISUAL_PREFIX = "transformer.visual."

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
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFAULT_MAX_SHARD_SIZE = "5GB"


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------
class CheckpointError(RuntimeError):
    """A checkpoint file or folder cannot be used. The message names the file and the reason."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's keys do not match what its file must contain.

    ``missing``, ``unexpected`` and ``mismatched`` (``(key, checkpoint_shape, model_shape)``) hold
    the full lists; the message shows them all at once (capped for readability), because fixing
    a conversion bug one key per run is miserable.
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
# Locating weight files
# ------------------------------------------------------------------------------------------------
def find_weights(path: PathLike, prefer_fp16: bool = False) -> Path | None:
    """The weights entry point of ``path``: the file itself, or inside a folder the index json or
    single weight file named by the HF / diffusers conventions (safetensors first).

    ``prefer_fp16`` picks diffusers' ``*.fp16.*`` variant when present (useful when the target
    dtype is float16 anyway: half the bytes to read). A folder holding exactly one weight file of
    another name (``QwenViT/qwen_vit_G.pt``) is accepted too. Returns None when nothing is found.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        return None
    names = (FP16_WEIGHT_FILE_NAMES + WEIGHT_FILE_NAMES) if prefer_fp16 else (
        WEIGHT_FILE_NAMES + FP16_WEIGHT_FILE_NAMES)
    for name in names:
        if (path / name).is_file():
            return path / name
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
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
    index_file = Path(index_file)
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_file}: not a readable checkpoint index ({exc})") from exc
    shards = {name: index_file.parent / name for name in set(weight_map.values())}
    absent = sorted(str(p) for p in shards.values() if not p.is_file())
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
# The release layout
# ------------------------------------------------------------------------------------------------
COMPONENTS = ("llm", "agent", "tokenizer", "vit", "sdxl", "detokenizer_stage1", "detokenizer_stage2")


def _is_llm_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file() and find_weights(p) is not None


def _is_weights(p: Path) -> bool:
    return find_weights(p) is not None


def _is_tokenizer_dir(p: Path) -> bool:
    return p.is_dir() and (p / "tokenizer.model").is_file()


def _is_sdxl_dir(p: Path) -> bool:
    return p.is_dir() and (p / "unet" / "config.json").is_file()


@dataclass
class SeedXPaths:
    """Every path of one SEED-X variant, resolved from one root by the release convention.

    Two layouts are understood (§1.1 of the reference), and can be mixed:

    * the monolithic ``AILab-CVC/SEED-X-17B`` tree the official scripts expect under
      ``pretrained/``: ``seed_x{,_i,_edit}/{llm,agent}``, ``seed_detokenizer/{first,second}_stage``,
      ``cvlm_llama2_tokenizer_100img_and_224loc_addpatch``, ``stable-diffusion-xl-base-1.0`` and the
      ViT as ``QwenViT/qwen_vit_G.pt`` (or the ``Qwen-VL-Chat`` shards it is extracted from);
    * the split repos ``seed-x-17b-{pretrain,instruct,edit}/`` (each with ``agent/``, ``llm/`` and
      its own tokenizer copy) and ``seed-x-17b-de-tokenizer/{first,second}_stage``, side by side
      under the root, or the root being one of them.

    Pass a path as keyword (``SeedXPaths.resolve(root, llm="/fast/ssd/llm")``) to override one
    component; overrides need no root. Unresolved components stay None; `require` turns them
    into one error that says what was looked for where.
    """

    root: Path | None = None
    variant: str = "seed_x_i"
    llm: Path | None = None
    agent: Path | None = None
    tokenizer: Path | None = None
    vit: Path | None = None
    sdxl: Path | None = None
    detokenizer_stage1: Path | None = None
    detokenizer_stage2: Path | None = None
    searched: dict[str, list[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(cls, root: PathLike | None = None, variant: str = "seed_x_i",
                **overrides: PathLike | None) -> "SeedXPaths":
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        unknown = sorted(set(overrides) - set(COMPONENTS))
        if unknown:
            raise TypeError(f"unknown path overrides {unknown}; components are {COMPONENTS}")
        root = Path(root) if root is not None else None
        split = SPLIT_REPOS[variant]
        out = cls(root=root, variant=variant)

        def candidates(component: str) -> list[tuple[Path, Callable[[Path], bool], str]]:
            if root is None:
                return []
            r, vit_dir = root, root / QWEN_VIT_DIRNAME
            return {
                "llm": [(r / variant / "llm", _is_llm_dir, "HF Llama folder (config.json + weights)"),
                        (r / split / "llm", _is_llm_dir, "HF Llama folder"),
                        (r / "llm", _is_llm_dir, "HF Llama folder")],
                "agent": [(r / variant / "agent", _is_weights, "agent weights"),
                          (r / split / "agent", _is_weights, "agent weights"),
                          (r / "agent", _is_weights, "agent weights")],
                "tokenizer": [(d, _is_tokenizer_dir, "folder with tokenizer.model") for d in (
                    r / TOKENIZER_DIRNAME, r / split / TOKENIZER_DIRNAME, r / variant / TOKENIZER_DIRNAME,
                    *(r / s / TOKENIZER_DIRNAME for s in SPLIT_REPOS.values() if s != split))],
                "vit": [(vit_dir / f"{QWEN_VIT_STEM}.safetensors", Path.is_file, "file"),
                        (vit_dir / f"{QWEN_VIT_STEM}.pt", Path.is_file, "file"),
                        (vit_dir, _is_weights, "folder with weights"),
                        (r / QWEN_VL_CHAT_DIRNAME, _is_weights,
                         "Qwen-VL-Chat shard folder (transformer.visual.* is extracted)")],
                "sdxl": [(r / SDXL_DIRNAME, _is_sdxl_dir, "diffusers folder with unet/config.json")],
                "detokenizer_stage1": [(r / d / "first_stage", _is_weights, "weights")
                                       for d in DETOKENIZER_DIRNAMES] + [
                    (r / "first_stage", _is_weights, "weights")],
                "detokenizer_stage2": [(r / d / "second_stage", _is_weights, "weights")
                                       for d in DETOKENIZER_DIRNAMES] + [
                    (r / "second_stage", _is_weights, "weights")],
            }[component]

        for component in COMPONENTS:
            override = overrides.get(component)
            if override is not None:
                setattr(out, component, Path(override))
                out.searched[component] = [f"{override} (given explicitly)"]
                continue
            searched = []
            for path, ok, what in candidates(component):
                searched.append(f"{path} ({what})")
                if ok(path):
                    setattr(out, component, path)
                    break
            out.searched[component] = searched or ["nowhere: no root and no explicit path given"]
        return out

    @property
    def vit_is_qwen_vl_chat(self) -> bool:
        """True when the ViT comes from Qwen-VL-Chat shards (keys carry ``transformer.visual.``)."""
        return self.vit is not None and is_qwen_vl_chat_checkpoint(self.vit)

    def require(self, *components: str) -> "SeedXPaths":
        """Raise one `CheckpointError` naming every missing component and where it was searched."""
        problems = []
        for component in components or COMPONENTS:
            path = getattr(self, component)
            if path is None or not path.exists():
                where = "\n      ".join(self.searched.get(component, [str(path)]))
                problems.append(f"  {component}: not found; looked for:\n      {where}")
        if problems:
            raise CheckpointError(
                f"SEED-X checkpoint components missing (root={self.root}, variant={self.variant}):\n"
                + "\n".join(problems))
        return self


# ------------------------------------------------------------------------------------------------
# Reading one file
# ------------------------------------------------------------------------------------------------
class SafetensorsFile(Mapping):
    """A lazy read-only ``{key: tensor}`` view of one safetensors file.

    Tensors are read on access, so streaming a shard costs one tensor at a time, and shapes come
    from the header without reading data (`shape`).
    """

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
    path = Path(path)
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
    if isinstance(state_dict, (SafetensorsFile, PeftLoraMergedView, CheckpointView)):
        return state_dict.shape(key)
    return tuple(state_dict[key].shape)


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


class CheckpointView(Mapping):
    """All shards of a checkpoint as one lazy ``{key: tensor}`` mapping.

    Only for files whose tensors must be combined across shards (a LoRA pair split over two
    shards); safetensors shards are read per tensor and pickles stay memory-mapped, so holding
    every shard open costs address space, not memory.
    """

    def __init__(self, path: PathLike):
        self._where: dict[str, Mapping[str, torch.Tensor]] = {}
        for _, state_dict in iter_checkpoint_shards(path):
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


def is_qwen_vl_chat_checkpoint(path: PathLike) -> bool:
    """Whether a ViT checkpoint is the Qwen-VL-Chat model (``transformer.visual.*`` keys)."""
    return any(k.startswith(QWEN_VISUAL_PREFIX) for k in checkpoint_keys(path))


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


# ------------------------------------------------------------------------------------------------
# Key conventions
# ------------------------------------------------------------------------------------------------
def is_ignored_key(key: str) -> bool:
    """Keys no model here needs: rotary ``inv_freq`` tables (recomputed from the config)."""
    return key.endswith("rotary_emb.inv_freq")


def identity_key_map(key: str) -> str | None:
    return None if is_ignored_key(key) else key


def prefix_key_map(prefix: str) -> KeyMap:
    """Plain keys of a sub-module's checkpoint -> names inside the parent model."""
    return lambda key: None if is_ignored_key(key) else prefix + key


def qwen_visual_key_map(key: str) -> str | None:
    """Qwen-VL-Chat shard key -> ViT key: keep ``transformer.visual.*`` stripped, drop the rest.

    This is what ``reload_qwen_vit.py`` does through Qwen's remote code; reading the index
    directly needs neither that code nor transformers 4.32.
    """
    if not key.startswith(QWEN_VISUAL_PREFIX) or is_ignored_key(key):
        return None
    return key[len(QWEN_VISUAL_PREFIX):]


def check_state_dict_keys(found: Mapping[str, Shape], expected: Mapping[str, Shape], label: str,
                          key_map: KeyMap = identity_key_map) -> dict[str, str]:
    """Compare a checkpoint's ``{key: shape}`` with what its file must contain.

    Returns ``{model_key: checkpoint_key}`` for the keys that will be loaded; raises
    `CheckpointMismatchError` with all missing / unexpected / mis-shaped keys otherwise.
    """
    plan, unexpected, mismatched = {}, [], []
    for raw, shape in found.items():
        key = key_map(raw)
        if key is None:
            continue
        if key not in expected:
            unexpected.append(raw if key == raw else f"{raw} (as {key})")
        elif tuple(shape) != tuple(expected[key]):
            mismatched.append((key, tuple(shape), tuple(expected[key])))
        else:
            plan[key] = raw
    missing = [k for k in expected if k not in plan and not any(m[0] == k for m in mismatched)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(label, missing, unexpected, mismatched)
    return plan


# ------------------------------------------------------------------------------------------------
# peft LoRA training dumps inside the agent file
# ------------------------------------------------------------------------------------------------
PEFT_PREFIX = "llm.base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")
_SAVED = re.compile(r"^(?P<module>.+)\.modules_to_save\.(?P<adapter>[^.]+)\.(?P<param>.+)$")


def plan_peft_merge(keys: Iterable[str]) -> tuple[dict[str, tuple], list[str]]:
    """How a peft-wrapped dump maps onto plain ``ContinuousLVLM`` names (pure key logic).

    ``train_seed_x_sft.py`` + ``zero_to_fp32.py`` write ``llm.base_model.model.<hf name>``:
    LoRA pairs ``<m>.lora_A.default.weight`` [r, in] / ``<m>.lora_B.default.weight`` [out, r]
    next to the frozen ``<m>.weight`` (peft >= 0.7: ``<m>.base_layer.weight``), RMSNorms as
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


class PeftLoraMergedView(Mapping):
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


# ------------------------------------------------------------------------------------------------
# Streaming a checkpoint into a model on the meta device
# ------------------------------------------------------------------------------------------------
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


def assert_materialised(model: nn.Module, device_map: Mapping[str, Any], label: str) -> None:
    """Every parameter has a value: none is left on ``meta`` except those offloaded to disk."""
    on_meta = [n for n, p in model.named_parameters()
               if p.device.type == "meta" and device_for(n, device_map) != "disk"]
    if on_meta:
        raise CheckpointError(f"{label}: after loading, {len(on_meta)} parameters were never "
                              f"given values (still on meta): {on_meta[:20]}")


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


def _as_shard_iter(shards: Any, key_filter: Callable[[str], bool] | None = None
                   ) -> tuple[Iterable[tuple[Any, Mapping]], list[Path] | None, PathLike | None]:
    if isinstance(shards, (str, os.PathLike)):
        return iter_checkpoint_shards(shards, key_filter=key_filter), list_shards(shards), shards
    if isinstance(shards, Mapping):
        return [("<state dict>", shards)], None, None
    return shards, None, None


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


# ------------------------------------------------------------------------------------------------
# Writing safetensors (sharded, crash-safe) and converting the pickled release
# ------------------------------------------------------------------------------------------------
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


def _save_shard(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _owned(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """A contiguous tensor that shares storage with no other one (safetensors refuses aliasing)."""
    tensor = tensor.detach().contiguous()
    storage = tensor.untyped_storage()
    if storage.data_ptr() in seen or storage.nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    seen.add(tensor.untyped_storage().data_ptr())
    return tensor


def save_state_dict(tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                    folder: PathLike, *, base_name: str = "model",
                    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                    dtype: torch.dtype | None = None, progress: bool | None = None) -> Path:
    """Write tensors as ``<base>.safetensors`` or ``<base>-0000k-of-0000n.safetensors`` + index.

    Streaming: tensors are consumed one by one and a shard is written as soon as it is full, so
    memory stays at about one output shard. Crash-safe: shards go to a hidden temporary folder
    first and are renamed into place only after all were written, the index (or the single file)
    last; an interrupted write leaves no file under a final name and the temp folder is removed.
    Returns the index json (several shards) or the single file.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    tmp = folder / f".{base_name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    metadata = {"format": "pt"}
    try:
        parts: list[tuple[Path, list[str]]] = []
        current: dict[str, torch.Tensor] = {}
        current_bytes, total_bytes, seen = 0, 0, set()

        def flush() -> None:
            nonlocal current, current_bytes, seen
            if not current:
                return
            part = tmp / f"part-{len(parts) + 1:05d}.safetensors"
            _save_shard(current, part, metadata)
            parts.append((part, list(current)))
            current, current_bytes, seen = {}, 0, set()

        for key, tensor in tqdm(items, unit="tensor", desc=f"writing {folder.name}", leave=False,
                                disable=progress is False if progress is not None else None):
            tensor = tensor.detach().to("cpu")
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            nbytes = tensor.numel() * tensor.element_size()
            if current and current_bytes + nbytes > limit:
                flush()
            current[key] = _owned(tensor, seen)
            current_bytes += nbytes
            total_bytes += nbytes
        flush()
        if not parts:
            raise CheckpointError(f"nothing to write into {folder}")

        index_path = folder / f"{base_name}.safetensors.index.json"
        single_path = folder / f"{base_name}.safetensors"
        for stale in (index_path, single_path):  # never leave an old entry point beside new shards
            stale.unlink(missing_ok=True)
        if len(parts) == 1:
            os.replace(parts[0][0], single_path)
            return single_path
        n = len(parts)
        weight_map = {}
        for i, (part, keys) in enumerate(parts, start=1):
            name = f"{base_name}-{i:05d}-of-{n:05d}.safetensors"
            os.replace(part, folder / name)
            weight_map.update({k: name for k in keys})
        tmp_index = tmp / "index.json"
        tmp_index.write_text(json.dumps({"metadata": {"total_size": total_bytes},
                                         "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        os.replace(tmp_index, index_path)
        return index_path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_to_safetensors(src: PathLike, dst: PathLike, dtype: torch.dtype | None = None,
                           max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, *,
                           key_map: KeyMap = identity_key_map, base_name: str | None = None,
                           copy_other_files: bool = True, progress: bool | None = None) -> Path:
    """Rewrite a pickled checkpoint (LLM shards + index, agent / de-tokenizer ``.bin``, Qwen ViT
    ``.pt``) as safetensors in ``dst``, streaming shard by shard (see `save_state_dict` for the
    crash-safety guarantees). Run it once; later loads memory-map safetensors and unpickle nothing.

    ``dtype`` casts floating tensors (e.g. bf16 halves the 52 GB fp32 LLM); ``key_map`` renames
    or drops keys, e.g. ``qwen_visual_key_map`` turns the ``Qwen-VL-Chat`` folder into the ViT
    file (only the shards holding ``transformer.visual.*`` are read). Non-weight files of a source
    folder (``config.json``, ``generation_config.json``, ...) are copied alongside.
    ``dst`` may be ``src``'s own folder: `find_weights` then prefers the new safetensors.
    """
    src, dst = Path(src), Path(dst)
    entry = find_weights(src)
    if entry is None:
        list_shards(src)
    if base_name is None:
        base_name = "diffusion_pytorch_model" if entry.name.startswith("diffusion_pytorch_model") else "model"
    key_filter = (lambda k: key_map(k) is not None) if key_map is not identity_key_map else None

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for _, state_dict in iter_checkpoint_shards(entry, key_filter=key_filter):
            for raw in list(state_dict):
                key = key_map(raw)
                if key is not None:
                    yield key, state_dict[raw]
            del state_dict

    dst.mkdir(parents=True, exist_ok=True)
    if copy_other_files and src.is_dir() and src.resolve() != dst.resolve():
        for item in src.iterdir():
            if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES + (".index.json",)):
                shutil.copy2(item, dst / item.name)
    out = save_state_dict(stream(), dst, base_name=base_name, max_shard_size=max_shard_size,
                          dtype=dtype, progress=progress)
    logger.info("converted %s -> %s", src, out)
    return out
