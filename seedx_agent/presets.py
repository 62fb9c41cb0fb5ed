"""Named models: ``Runtime.from_pretrained("tiny")`` / ``("nano")`` and the CLI's default.

A preset is a name that builds a `Runtime` without a path:

``tiny``
    An UNTRAINED random-weight SEED-X stack with the official structure and tiny widths
    (`core_models.config.SeedXConfig.tiny`). Its text and pictures are noise; it exists to
    exercise the real code paths offline, in seconds.
``nano``
    SEED-X Nano (issue 4): a small SEED-X trained from scratch on a procedural world of shapes,
    shipped in ``core_models/assets/nano/`` in the release layout plus ``adapters/<variant>/``
    (peft LoRA adapters on one base LLM, registered as variants). It loads through the same
    path as a release folder. While its training is unfinished (``nano_manifest.json`` lists
    the finished stages), the missing components are random-weight stand-ins and the runtime
    says so plainly: ``runtime.untrained_components`` and ``runtime.notice``.

``DEFAULT_PRESET`` is ``"nano"`` once the shipped Nano has its ViT, VAE, LLM and stage-1
de-tokenizer (what describing, grounding, counting and drawing need) *and* its manifest records
that ``seedx eval nano`` met issue 4's thresholds; else ``"tiny"``.

Importing this module does not import torch (the CLI reads ``DEFAULT_PRESET`` at start-up).
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .runtime import Runtime

logger = logging.getLogger(__name__)

NANO_PRESET = "nano"
TINY_PRESET = "tiny"
NANO_MANIFEST = "nano_manifest.json"
# Training stages of the Nano and the components they produce (core_models/nano/train.py).
NANO_STAGES: dict[str, str] = {
    "vit": "ViT visual tokenizer",
    "vae": "VAE",
    "llm": "LLM (text, boxes, image features)",
    "detok1": "de-tokenizer stage 1 (drawing)",
    "detok2": "de-tokenizer stage 2 (editing, try-on)",
    "lora": "task adapters (LoRA)",
}
NANO_REQUIRED_FOR_DEFAULT = ("vit", "vae", "llm", "detok1")


def nano_dir() -> Path:
    """``core_models/assets/nano``: where the trained Nano ships (and ``train.py`` exports)."""
    spec = importlib.util.find_spec("core_models")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]) / "assets" / "nano"
    return Path(__file__).resolve().parents[1] / "core_models" / "assets" / "nano"


def nano_manifest(root: str | Path | None = None) -> dict[str, Any] | None:
    """The export's ``nano_manifest.json`` (finished stages, adapters, plan, metrics), or None."""
    path = Path(root if root is not None else nano_dir()) / NANO_MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def nano_finished_stages(root: str | Path | None = None) -> set[str]:
    manifest = nano_manifest(root)
    return set(manifest.get("finished_stages", ())) if manifest else set()


def shipped_nano_finished(root: str | Path | None = None,
                          required: tuple[str, ...] = NANO_REQUIRED_FOR_DEFAULT) -> bool:
    """True when the shipped Nano has finished every stage in ``required``."""
    return set(required) <= nano_finished_stages(root)


def nano_meets_thresholds(root: str | Path | None = None) -> bool:
    """True once ``seedx eval nano`` showed the shipped Nano meets issue 4's thresholds (recorded
    as ``"meets_thresholds": true`` in ``nano_manifest.json`` together with the measured numbers).

    A Nano that has finished training but answers below the thresholds is available as
    ``--model nano`` without becoming everyone's default.
    """
    manifest = nano_manifest(root)
    return bool(manifest and manifest.get("meets_thresholds") is True)


DEFAULT_PRESET = (NANO_PRESET if shipped_nano_finished() and nano_meets_thresholds()
                  else TINY_PRESET)


# --- the registry ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    build: Callable[..., "Runtime"]


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, description: str, build: Callable[..., "Runtime"]) -> Preset:
    """Add a preset: ``build(**from_pretrained_keywords)`` returns a `Runtime`."""
    preset = Preset(name, description, build)
    PRESETS[name] = preset
    return preset


def build(name: str, **kwargs: Any) -> "Runtime":
    """The runtime of preset ``name``; keywords as `Runtime.from_pretrained` takes them."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
    return preset.build(**kwargs)


def _build_tiny(**kwargs: Any) -> "Runtime":
    from .runtime import Runtime

    return Runtime.from_pretrained(TINY_PRESET, **kwargs)


# --- the Nano --------------------------------------------------------------------------------------

def untrained_notice(name: str, missing: list[str]) -> str:
    parts = ", ".join(NANO_STAGES.get(s, s) for s in missing)
    return (f"model {name!r} is SEED-X Nano with UNFINISHED training: these components are "
            f"UNTRAINED random-weight stand-ins: {parts}. What they produce is noise; the "
            "trained stages are real. The stages finish with python -m core_models.nano.train.")


def build_nano(*, root: str | Path | None = None, name: str = NANO_PRESET, dtype: Any = None,
               placement: Any = None, variant: str | None = None, variants: Any = None,
               residency: Any = None, progress: bool | None = None,
               load_plugins: bool = True) -> "Runtime":
    """The SEED-X Nano at ``root`` (default: the shipped ``core_models/assets/nano``).

    With its LLM trained, the folder loads through ``Runtime.from_pretrained(folder)`` like any
    release (its adapters become variants); stages still missing get random-weight stand-ins.
    Without a trained LLM, the stack is built from the folder's ``seedx_config.json`` and
    tokenizer, and the finished components are loaded into it.
    """
    from .runtime import Runtime

    root = Path(root if root is not None else nano_dir())
    manifest = nano_manifest(root)
    if manifest is None or not (root / "seedx_config.json").is_file():
        raise FileNotFoundError(
            f"no SEED-X Nano export at {root} ({NANO_MANIFEST} and seedx_config.json expected): "
            "train and export it with python -m core_models.nano.train")
    finished = set(manifest.get("finished_stages", ()))
    missing = [s for s in NANO_STAGES if s not in finished]
    base = variant or manifest.get("base_variant") or "seed_x_i"
    kwargs = dict(dtype=dtype, placement=placement, variants=variants, residency=residency,
                  progress=progress, load_plugins=load_plugins)
    if "llm" in finished:
        runtime = Runtime.from_pretrained(root, variant=base, **kwargs)
        _stand_in_missing(runtime, root, finished)
    else:
        runtime = _partial_nano(root, base, finished, **kwargs)
    runtime.name = name
    runtime.untrained_components = tuple(NANO_STAGES[s] for s in missing)
    runtime.untrained = "llm" not in finished
    if missing:
        runtime.notice = untrained_notice(name, missing)
        logger.warning(runtime.notice)
    elif not nano_meets_thresholds(root):
        runtime.notice = (f"model {name!r} is SEED-X Nano from a short first training run: it is "
                          "trained but below its quality targets (see docs/model_card_nano.md for "
                          "the measured numbers); expect wrong boxes and edits")
        logger.warning(runtime.notice)
    plan = manifest.get("plan") or {}
    if "detok1" in finished or "detok2" in finished:
        runtime.default_steps = int(plan.get("sample_steps") or 20)
    return runtime


def _random_detokenizer(config: Any, stage: int, dtype: Any, device: Any, seed: int = 0):
    """A random-weight de-tokenizer stage (what ``SeedXStack.from_config`` builds)."""
    import torch

    from core_models.detokenizer import SDXLAdapter, SDXLAdapterWithLatentImage
    from core_models.detokenizer_resampler import ResamplerXLV2
    from core_models.stack import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1 + stage)
        cls = SDXLAdapter if stage == 1 else SDXLAdapterWithLatentImage
        adapter = cls(build_unet(config.unet), ResamplerXLV2(**config.detokenizer_resampler))
    return adapter.to(device=device, dtype=dtype).eval()


def _stand_in_missing(runtime: "Runtime", root: Path, finished: set[str]) -> None:
    """Random stand-ins for de-tokenizer stages the export does not ship yet."""
    stack = runtime.stack
    real = stack._detokenizer_factory
    dtype = next(stack.vit.parameters()).dtype
    device = runtime.placement.device_for("detokenizer")

    def detokenizer(stage: int):
        if ("detok1" if stage == 1 else "detok2") in finished:
            return real(stage)
        logger.warning("SEED-X Nano: de-tokenizer stage %d is not trained yet; using random "
                       "weights", stage)
        return _random_detokenizer(stack.config, stage, dtype, device)

    stack._detokenizer_factory = detokenizer


def _partial_nano(root: Path, base: str, finished: set[str], *, dtype: Any, placement: Any,
                  variants: Any, residency: Any, progress: bool | None,
                  load_plugins: bool) -> "Runtime":
    """A Nano whose LLM is not trained yet: the stack from the folder's config and tokenizer,
    the finished ViT / VAE / de-tokenizers loaded, the rest random."""
    from core_models import checkpoint as ckpt
    from core_models.config import SeedXConfig
    from core_models.stack import SeedXStack, load_detokenizer, load_vae, load_vit

    from .placement import Placement
    from .runtime import Runtime, _resolve_dtype
    from .variants import VariantRegistry

    placement = Placement.parse(placement if placement is not None else "cpu")
    torch_dtype = _resolve_dtype(dtype) if dtype is not None else placement.torch_dtype()
    variants = variants or VariantRegistry()
    if load_plugins:
        from .plugins import pm
        pm.hook.register_variants(register=variants.register)
    config = SeedXConfig.load(root / "seedx_config.json")
    device = placement.device_for("llm")
    stack = SeedXStack.from_config(config, tokenizer_dir=root / ckpt.TOKENIZER_DIRNAME, seed=0,
                                   dtype=torch_dtype, device=device, variant=base)
    paths = ckpt.SeedXPaths.resolve(root, base)
    if "vit" in finished and paths.vit is not None:
        stack.vit = load_vit(paths.vit, vit=config.vit, dtype=torch_dtype, device_map=device,
                             progress=progress)
    random_detok, random_vae = stack._detokenizer_factory, stack._vae_factory

    def vae():
        if "vae" in finished and paths.sdxl is not None and (paths.sdxl / "vae").is_dir():
            return load_vae(paths.sdxl, vae=config.vae, dtype=torch_dtype, device_map=device,
                            progress=progress)
        return random_vae()

    def detokenizer(stage: int):
        weights = paths.detokenizer_stage1 if stage == 1 else paths.detokenizer_stage2
        if ("detok1" if stage == 1 else "detok2") in finished and weights is not None:
            return load_detokenizer(stage, weights, sdxl_dir=paths.sdxl, unet=config.unet,
                                    detokenizer_resampler=config.detokenizer_resampler,
                                    dtype=torch_dtype, device_map=device, progress=progress)
        return random_detok(stage)

    stack._vae_factory, stack._detokenizer_factory = vae, detokenizer
    # Like the tiny preset: every built-in variant is the same (untrained) network.
    return Runtime(stack, name=NANO_PRESET, placement=placement, variants=variants,
                   residency=residency, agent_loader=lambda v: stack.agent, untrained=True)


register_preset(TINY_PRESET, "UNTRAINED random-weight SEED-X with tiny widths (code paths only)",
                _build_tiny)
register_preset(NANO_PRESET, "SEED-X Nano: a small SEED-X trained on a procedural world of "
                             "shapes (core_models/assets/nano)", build_nano)
