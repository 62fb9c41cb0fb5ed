"""``--warm-start DIR``: begin a run from another run's stages, or from a Nano's shipped weights.

Training is done in pieces, often on another machine than the one that started it, so a run can
take over what exists elsewhere instead of training it again:

* ``DIR`` is a **run directory** (it has ``stages/``; ``nano-resume/`` in the repository and
  ``../shared/nano-warmstart`` are such directories): every stage folder this run does not have
  yet is copied as it is: a finished stage (``done.json`` and its fp16 weights, with or without
  ``ckpt.pt``) stays finished, an unfinished one (``ckpt.pt`` only) resumes from its step.
  ``data/`` and ``features/`` are copied too when this run has none.
* ``DIR`` is an **export** (it has ``nano_manifest.json``, like the plugin's ``weights/``): every
  finished stage of its manifest becomes a finished stage of this run, its weights read through
  the release loader (`SeedXStack.from_pretrained`) and written as the stage's fp16 files, its
  ``done.json`` the manifest's metrics plus ``warm_started_from``. LoRA adapters are not taken
  over: they are cheap and must match the LLM they were trained on.

A stage this run already has is never touched, so the same command can be given again after a
stop. A stage whose model, loss or data changed since ``DIR`` was made must be deleted from the
run (or never copied): its weights would be those of the old definition.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..manifest import MANIFEST_NAME
from .checkpoint import save_fp16
from .run import Run, say

# stage -> (module name in the stage's files, what of the stack holds it)
EXPORT_STAGES = {"vit": "vit", "vae": "vae", "llm": "agent", "detok1": "adapter", "detok2": "adapter"}


class WarmStartError(ValueError):
    """``--warm-start`` got a folder that is neither a run directory nor a Nano export."""


def warm_start(run: Run, source: Path) -> list[str]:
    """Fill ``run`` from ``source``; the names of the stages (and folders) taken over."""
    source = Path(source)
    if (source / "stages").is_dir():
        return _from_run(run, source)
    if (source / MANIFEST_NAME).is_file():
        return _from_export(run, source)
    raise WarmStartError(f"--warm-start {source}: neither a run directory (no stages/) nor a Nano "
                         f"export (no {MANIFEST_NAME})")


def _from_run(run: Run, source: Path) -> list[str]:
    taken = []
    for folder in ("data", "features"):
        if (source / folder).is_dir() and not (run.out / folder).exists():
            shutil.copytree(source / folder, run.out / folder)
            taken.append(folder)
    for stage_dir in sorted((source / "stages").iterdir()):
        target = run.stage_dir(stage_dir.name)
        if not stage_dir.is_dir() or target.exists():
            continue
        shutil.copytree(stage_dir, target)
        taken.append(stage_dir.name)
        state = "finished" if (target / "done.json").is_file() else "resumes from its checkpoint"
        say("warm-start", f"{stage_dir.name}: taken from {source} ({state})")
    return taken


def _from_export(run: Run, source: Path) -> list[str]:
    import torch

    from core_models.stack import SeedXStack

    manifest = json.loads((source / MANIFEST_NAME).read_text())
    wanted = [s for s in EXPORT_STAGES if s in manifest.get("finished_stages", ())
              and not run.stage_dir(s).exists()]
    if not wanted:
        return []
    stack = SeedXStack.from_pretrained(source, manifest.get("base_variant", "seed_x_i"),
                                       dtype=torch.float32)
    parts = {"vit": lambda: stack.vit, "vae": lambda: stack.vae, "llm": lambda: stack.agent,
             "detok1": lambda: stack.detokenizer(1), "detok2": lambda: stack.detokenizer(2)}
    for stage in wanted:
        name = EXPORT_STAGES[stage]
        save_fp16(parts[stage]().state_dict(), run.stage_dir(stage) / f"{name}.fp16.safetensors")
        done = dict(manifest.get("metrics", {}).get(stage, {}), warm_started_from=str(source))
        if stage.startswith("detok") and "definition" not in done:
            # what the UNet predicts is in the export's scheduler config; the other stage-2
            # settings only matter for resuming, and an export has no checkpoint to resume
            done["definition"] = {"prediction_type": stack.config.scheduler.get("prediction_type", "epsilon")}
        run.mark_done(stage, done)
        say("warm-start", f"{stage}: finished stage taken from the export {source}")
    return wanted
