"""Stage ``export``: the shipped tree, in the layout every SEED-X release loads from.

`SeedXStack.save_pretrained` writes the whole stack; only the parts whose stages are finished are
kept (an unfinished part is left out, never shipped random), the LoRA adapters go to
``adapters/<variant>/``, and ``nano_manifest.json`` (`seedx_nano.manifest`) records what was
trained, the plan, the metrics, the size and how the model draws by default. The default target
is the plugin's ``weights/`` folder, where the ``nano`` preset loads from.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from core_models import checkpoint as ckpt
from core_models.files import atomic_write, write_json
from core_models.stack import SeedXStack

from ..manifest import MANIFEST_NAME, WEIGHTS_DIR
from .checkpoint import load_stage_modules
from .plan import TRAINED
from .run import Run, say

EXPORT_DIR = WEIGHTS_DIR
BASE_VARIANT = "seed_x_i"
SIZE_LIMIT_BYTES = 40 * 1024 * 1024
RENDER_SEED = 42  # the official scripts' seed; RenderDefaults' too


def export(run: Run, target: Path) -> dict:
    """Write the finished stages into ``target`` in `SeedXStack.save_pretrained`'s layout.

    The stack is built from the Nano config, every *finished* component's weights are loaded,
    ``save_pretrained`` writes the whole tree to a scratch folder in fp16, and only the parts
    whose stages are finished are moved into ``target`` (unfinished parts are left out, never
    shipped random). ``adapters/<variant>/`` holds the peft folders of the finished adapters.
    ``target`` is replaced as a whole, at the end.
    """
    cfg = run.config()
    done = {s for s in TRAINED if run.done(s)}
    stack = SeedXStack.from_config(cfg, tokenizer_dir=run.data_dir / "tokenizer", seed=run.plan.seed,
                                   variant=BASE_VARIANT)
    if "vit" in done:
        stack.vit.load_state_dict(load_stage_modules(run, "vit")["vit"])
    if "llm" in done:
        stack.agent.load_state_dict(load_stage_modules(run, "llm")["agent"])
    if "vae" in done:
        stack.vae.load_state_dict(load_stage_modules(run, "vae")["vae"])
        stack.vae.register_to_config(scaling_factor=float(cfg.vae["scaling_factor"]))
    stages = tuple(s for s, name in ((1, "detok1"), (2, "detok2")) if name in done)
    if 1 in stages:
        stack.detokenizer(1).load_state_dict(load_stage_modules(run, "detok1")["adapter"])
    if 2 in stages:
        stack.detokenizer(2).load_state_dict(load_stage_modules(run, "detok2")["adapter"])
    scratch = run.out / "export_scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    stack.save_pretrained(scratch, variant=BASE_VARIANT, dtype=torch.float16,
                          stages=stages or (1,))
    keep = [Path("seedx_config.json"), Path(ckpt.TOKENIZER_DIRNAME)]
    if "vit" in done:
        keep.append(Path(ckpt.QWEN_VIT_DIRNAME))
    if "llm" in done:
        keep.append(Path(BASE_VARIANT))
    sd = Path(ckpt.SDXL_DIRNAME)
    if "vae" in done:
        keep += [sd / "vae", sd / "scheduler"]
    if 1 in stages:
        keep += [sd / "unet", Path(ckpt.DETOKENIZER_DIRNAMES[0]) / "first_stage"]
    elif 2 in stages:
        keep += [sd / "unet"]
    if 2 in stages:
        keep.append(Path(ckpt.DETOKENIZER_DIRNAMES[0]) / "second_stage")
    with atomic_write(target, directory=True) as staging:
        for rel in keep:
            src = scratch / rel
            if src.exists():
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(src, staging / rel) if src.is_dir() else shutil.copy2(src, staging / rel)
        adapters = run.stage_dir("lora") / "adapters"
        shipped_adapters = []
        if adapters.is_dir():
            for folder in sorted(adapters.iterdir()):
                if run.done(f"lora_{folder.name}"):
                    shutil.copytree(folder, staging / "adapters" / folder.name)
                    shipped_adapters.append(folder.name)
                    readme = staging / "adapters" / folder.name / "README.md"
                    readme.unlink(missing_ok=True)  # peft's model-card boilerplate
        manifest = dict(
            model="SEED-X Nano", base_variant=BASE_VARIANT, adapters=shipped_adapters,
            finished_stages=sorted(done), plan=asdict(run.plan),
            render_defaults=dict(seed=RENDER_SEED, num_inference_steps=run.plan.sample_steps,
                                 guidance_scale=run.plan.guidance),
            metrics={s: _summary(run.done(s)) for s in sorted(done)})
        write_json(staging / MANIFEST_NAME, manifest, sort_keys=True)
        total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())  # incl. manifest
        manifest["bytes"] = total
        write_json(staging / MANIFEST_NAME, manifest, sort_keys=True)
        if total > SIZE_LIMIT_BYTES:
            say("export", f"WARNING: {total / 2**20:.1f} MiB exceeds the 40 MB budget")
        shutil.rmtree(target, ignore_errors=True)  # replaced by the rename just after
    shutil.rmtree(scratch, ignore_errors=True)
    say("export", f"wrote {target} ({total / 2**20:.2f} MiB): stages {sorted(done)}, adapters {shipped_adapters}")
    return dict(bytes=total, finished_stages=sorted(done), adapters=shipped_adapters, target=str(target))


def _summary(done: dict | None) -> dict:
    if not done:
        return {}
    return {k: v for k, v in done.items() if k not in ("history",)}
