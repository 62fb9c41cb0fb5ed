"""The ``nano`` preset: SEED-X Nano as a runtime, complete or still in training.

The shipped export (``weights/``, or any folder the training pipeline exported) is a release
layout plus ``adapters/<variant>/`` (peft LoRA adapters on one base LLM, registered as variants)
and ``nano_manifest.json``. With its LLM trained it loads through
``seedx_agent.Runtime.from_pretrained`` like any release; de-tokenizer stages not trained yet
get random-weight stand-ins. Without a trained LLM it is a random-weight runtime of the folder's
sizes (``Runtime.from_config``) with the finished ViT, VAE and de-tokenizers loaded into it. Either
way the runtime says plainly what is untrained (``untrained_components``, ``notice``), and draws
with the manifest's defaults (`seedx_nano.manifest.render_defaults`).

The preset is the default model as soon as the shipped Nano has finished the stages that
describing, grounding, counting and drawing need: a newcomer's first run should show a model that
does something. How well it does it is not hidden behind that choice but measured
(``seedx eval nano``) and written in the README and docs/model_card_nano.md; the runtime's notice
says what the Nano is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from seedx_agent import Preset

from . import manifest as nano_manifest
from .manifest import MANIFEST_NAME, STAGE_COMPONENTS, WEIGHTS_DIR

logger = logging.getLogger(__name__)

NANO = "nano"
DESCRIPTION = "SEED-X Nano: a small SEED-X trained on a procedural world of shapes (seedx_nano)"
WORLD_ONLY = ("model {name!r} is SEED-X Nano, a small SEED-X trained here on a world of coloured "
              "shapes, people and pages: outside that world its answers mean nothing, and inside "
              "it some skills are still weak (measured numbers: docs/model_card_nano.md)")


def nano_preset() -> Preset:
    """The preset record; the default once the shipped weights' manifest says the stages that
    describing, grounding, counting and drawing need are trained."""
    return Preset(name=NANO, build=build_nano, description=DESCRIPTION,
                  default=nano_manifest.is_finished(), claims=is_nano_folder)


def is_nano_folder(folder: Path) -> bool:
    """A Nano export (``nano_manifest.json`` beside the release layout): loaded as the preset
    loads the shipped one (its manifest's render defaults, stand-ins for untrained parts)."""
    return (Path(folder) / MANIFEST_NAME).is_file() and (Path(folder) / "seedx_config.json").is_file()


def untrained_notice(name: str, missing: list[str]) -> str:
    parts = ", ".join(STAGE_COMPONENTS.get(s, s) for s in missing)
    return (f"model {name!r} is SEED-X Nano with UNFINISHED training: these components are "
            f"UNTRAINED random-weight stand-ins: {parts}. What they produce is noise; the "
            "trained stages are real. The stages finish with python -m seedx_nano.train.")


def build_nano(*, root: str | Path | None = None, name: str = NANO, variant: str | None = None,
               **kwargs: Any):
    """The SEED-X Nano at ``root`` (default: the shipped ``weights/``) as a `seedx_agent.Runtime`.

    ``kwargs`` are `Runtime.from_pretrained`'s (``dtype``, ``placement``, ``variants``,
    ``residency``, ``progress``, ``load_plugins``); ``variant`` defaults to the export's base.
    """
    from seedx_agent import RenderDefaults, Runtime

    root = Path(root if root is not None else WEIGHTS_DIR)
    manifest = nano_manifest.read_manifest(root)
    if manifest is None or not (root / "seedx_config.json").is_file():
        raise FileNotFoundError(
            f"no SEED-X Nano export at {root} ({MANIFEST_NAME} and seedx_config.json expected): "
            "train and export it with python -m seedx_nano.train")
    finished = set(manifest.get("finished_stages", ()))
    missing = [s for s in STAGE_COMPONENTS if s not in finished]
    base = variant or manifest.get("base_variant") or "seed_x_i"
    if "llm" in finished:
        runtime = Runtime.from_pretrained(root, variant=base, **kwargs)
        _stand_in_missing_detokenizers(runtime, finished)
    else:
        runtime = _partial_nano(root, base, finished, name, **kwargs)
    runtime.name = name
    runtime.untrained_components = tuple(STAGE_COMPONENTS[s] for s in missing)
    runtime.untrained = "llm" not in finished
    if missing:
        runtime.notice = untrained_notice(name, missing)
        logger.warning(runtime.notice)
    else:
        runtime.notice = WORLD_ONLY.format(name=name)
    given = {k: v for k, v in nano_manifest.render_defaults(manifest).items()
             if k in RenderDefaults.model_fields}
    if given:
        runtime.render_defaults = RenderDefaults(**{**runtime.render_defaults.model_dump(), **given})
    return runtime


def random_detokenizer(config: Any, stage: int, dtype: Any, device: Any, seed: int = 0):
    """A random-weight de-tokenizer stage, drawn as ``SeedXStack.from_config`` draws it."""
    import torch

    from core_models.detokenizer import SDXLAdapter, SDXLAdapterWithLatentImage
    from core_models.detokenizer_resampler import ResamplerXLV2
    from core_models.stack import build_unet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1 + stage)
        cls = SDXLAdapter if stage == 1 else SDXLAdapterWithLatentImage
        adapter = cls(build_unet(config.unet), ResamplerXLV2(**config.detokenizer_resampler))
    return adapter.to(device=device, dtype=dtype).eval()


def _stand_in_missing_detokenizers(runtime, finished: set[str]) -> None:
    """Random stand-ins for de-tokenizer stages the export does not ship yet."""
    stack = runtime.stack
    dtype = next(stack.vit.parameters()).dtype
    device = runtime.placement.device_for("detokenizer")

    def detokenizer(stage: int):
        if ("detok1" if stage == 1 else "detok2") in finished:
            return real(stage)
        logger.warning("SEED-X Nano: de-tokenizer stage %d is not trained yet; using random "
                       "weights", stage)
        return random_detokenizer(stack.config, stage, dtype, device)

    real = stack.replace_loader("detokenizer", detokenizer)  # the release loader, for trained stages


def _partial_nano(root: Path, base: str, finished: set[str], name: str, **kwargs: Any):
    """A Nano whose LLM is not trained yet: a random-weight runtime of the folder's sizes and
    tokenizer, with the finished ViT / VAE / de-tokenizers loaded into it."""
    from core_models import checkpoint as ckpt
    from core_models.config import SeedXConfig
    from core_models.stack import load_detokenizer, load_vae, load_vit
    from seedx_agent import Runtime

    progress = kwargs.get("progress")
    config = kwargs.pop("config", None) or SeedXConfig.load(root / "seedx_config.json")
    # Like the tiny preset: every variant is the same (untrained) network.
    runtime = Runtime.from_config(config, tokenizer_dir=root / ckpt.TOKENIZER_DIRNAME, name=name,
                                  variant=base, **kwargs)
    stack = runtime.stack
    dtype = next(stack.vit.parameters()).dtype
    device = runtime.placement.device_for("llm")
    paths = ckpt.SeedXPaths.resolve(root, base)
    if "vit" in finished and paths.vit is not None:
        trained = load_vit(paths.vit, vit=config.vit, dtype=dtype, device_map=device,
                           progress=progress)
        stack.vit.load_state_dict(trained.state_dict())

    def vae():
        if "vae" in finished and paths.sdxl is not None and (paths.sdxl / "vae").is_dir():
            return load_vae(paths.sdxl, vae=config.vae, dtype=dtype, device_map=device,
                            progress=progress)
        return random_vae()

    def detokenizer(stage: int):
        weights = paths.detokenizer_stage1 if stage == 1 else paths.detokenizer_stage2
        if ("detok1" if stage == 1 else "detok2") in finished and weights is not None:
            return load_detokenizer(stage, weights, sdxl_dir=paths.sdxl, unet=config.unet,
                                    detokenizer_resampler=config.detokenizer_resampler,
                                    dtype=dtype, device_map=device, progress=progress)
        return random_stage(stage)

    # from_config's own loaders draw the random parts
    random_vae = stack.replace_loader("vae", vae)
    random_stage = stack.replace_loader("detokenizer", detokenizer)
    return runtime
