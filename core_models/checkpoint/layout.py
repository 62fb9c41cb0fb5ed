"""Where the files of a SEED-X release are: one root, the release's folder and file names.

The official scripts hard-code ``pretrained/`` paths; the weights were later also published as
separate per-model HF repos with other folder names. `SeedXPaths` resolves every component of
one variant from one root under either convention (each path can also be given explicitly), and
a missing component fails once, listing every place that was searched, rather than as a bare
``FileNotFoundError`` deep inside a 52 GB load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .keys import is_qwen_vl_chat_checkpoint
from .reading import CheckpointError, PathLike, find_weights, followed

# Names of the release (§1 of the reference).
VARIANTS = ("seed_x", "seed_x_i", "seed_x_edit")
SPLIT_REPOS = {"seed_x": "seed-x-17b-pretrain", "seed_x_i": "seed-x-17b-instruct",
               "seed_x_edit": "seed-x-17b-edit"}
TOKENIZER_DIRNAME = "cvlm_llama2_tokenizer_100img_and_224loc_addpatch"
SDXL_DIRNAME = "stable-diffusion-xl-base-1.0"
DETOKENIZER_DIRNAMES = ("seed_detokenizer", "seed-x-17b-de-tokenizer")
QWEN_VIT_DIRNAME, QWEN_VIT_STEM = "QwenViT", "qwen_vit_G"
QWEN_VL_CHAT_DIRNAME = "Qwen-VL-Chat"

COMPONENTS = ("llm", "agent", "tokenizer", "vit", "sdxl", "detokenizer_stage1", "detokenizer_stage2")


def _has_file(folder: Path, name: str) -> bool:
    """``folder/name`` is a file (a symlink into a Hugging Face cache's blobs counts, and is
    logged; a dangling one raises `CheckpointError` rather than reading as missing)."""
    return folder.is_dir() and followed(folder / name).is_file()


def _is_llm_dir(p: Path) -> bool:
    return _has_file(p, "config.json") and find_weights(p) is not None


def _is_weights(p: Path) -> bool:
    return find_weights(p) is not None


def _is_tokenizer_dir(p: Path) -> bool:
    return _has_file(p, "tokenizer.model")


def _is_sdxl_dir(p: Path) -> bool:
    return _has_file(p / "unet", "config.json")


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

