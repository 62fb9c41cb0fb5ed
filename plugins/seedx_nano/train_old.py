"""SEED-X Nano: the staged, resumable, deterministic training pipeline (issue 4).

One command trains every component of a small SEED-X from scratch on the procedural world of
``world`` / ``tasks``, following SEED-X's recipe at small scale::

    python -m core_models.nano.train --out runs/nano            # everything (6 h defaults)
    python -m core_models.nano.train --out runs/nano --smoke    # a few steps of every stage
    python -m core_models.nano.train --out runs/nano --stages vit,vae --steps vit=500

Stages, in order (see docs/nano.md for what each does and how long it takes):

``data``      render scenes and task examples (uint8 views, token ids), train the tokenizer
``vit``       the ViT visual tokenizer, with dense per-cell colour/shape/pixel targets; then frozen
``vae``       the f=4 AutoencoderKL; its latent scaling factor is measured at the end
``features``  cache frozen-ViT features and VAE latents for everything that follows
``llm``       ContinuousLVLM pre-training: next-token loss + 6 x MSE feature regression
``detok1``    de-tokenizer stage 1: ResamplerXLV2 -> UNet cross-attention + pooled/time embeds
``detok2``    de-tokenizer stage 2: 8-channel conv_in (from stage 1), condition latent = source
``lora``      peft LoRA adapters per variant on the pre-trained LLM
``export``    the shipped tree: `SeedXStack.save_pretrained` layout + ``adapters/<variant>/``

``llm`` + ``lora`` and ``detok1`` + ``detok2`` are independent; with ``--parallel`` (default
outside ``--smoke``) the LLM lane runs in a child process with one thread while the de-tokenizer
lane uses the other.

Every training stage checkpoints model + optimizer + RNG + step atomically every
``--ckpt-every`` steps and on SIGINT/SIGTERM, resumes from its last checkpoint, and draws each
step's batch and noise from a generator seeded by ``(seed, stage, step)`` so a resumed run equals
a straight one. A finished stage writes ``done.json`` (its metrics) and its weights as fp16
safetensors under ``<out>/stages/<stage>/``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..any_res import (choose_resolution, image_token_block, parse_grids, process_anyres_image,
                       tile_boxes)
from ..config import SeedXConfig
from ..qwen_vit import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, negative_pixel_values
from .config import NANO_RESOLUTION, nano_config

STAGES = ("data", "vit", "vae", "features", "llm", "detok1", "detok2", "lora", "export")
TRAINED = ("vit", "vae", "llm", "detok1", "detok2", "lora")
IGNORE = -100
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_NAMES = ("circle", "square", "triangle")
TOKENIZER_VOCAB = 600          # SentencePiece pieces (incl. 3 specials + 256 byte-fallback pieces)
TOKENIZER_TEXT_EXAMPLES = 2000  # examples whose text trains the tokenizer (fixed: deterministic)
BASE_VARIANT = "seed_x_i"
EXPORT_DIR = Path(__file__).resolve().parents[1] / "assets" / "nano"
SIZE_LIMIT_BYTES = 40 * 1024 * 1024


# =================================================================================================
# The plan: sizes, steps and budgets of one run
# =================================================================================================

@dataclass
class Plan:
    seed: int = 0
    threads: int = 2
    # data
    n_scenes: int = 12000          # random scenes -> any-res views for the ViT and VAE
    n_examples: int = 24000        # task examples for the LLM (and the de-tokenizers' targets)
    n_eval: int = 256              # held-out task examples / scenes (EVAL seeds)
    n_pairs: int = 8000            # extra edit / try-on / story examples for de-tokenizer stage 2
    # steps, minute caps, batch sizes and learning rates per stage
    steps: dict = field(default_factory=lambda: dict(vit=2000, vae=6000, llm=6000, detok1=5000,
                                                     detok2=2500, lora=300))
    minutes: dict = field(default_factory=lambda: dict(vit=10, vae=40, llm=150, detok1=110,
                                                       detok2=55, lora=6))  # lora: per variant
    batch: dict = field(default_factory=lambda: dict(vit=64, vae=16, llm=24, detok1=32, detok2=32,
                                                     lora=16))
    lr: dict = field(default_factory=lambda: dict(vit=1e-3, vae=1e-3, llm=1e-3, detok1=5e-4,
                                                  detok2=2e-4, lora=1e-3))
    warmup: int = 100
    ckpt_every: int = 200
    log_every: int = 25
    lora_rank: int = 16
    p_uncond: float = 0.1          # classifier-free dropout of the de-tokenizer conditioning
    eval_samples: int = 32         # pictures sampled per de-tokenizer evaluation
    sample_steps: int = 20         # Euler steps when sampling for evaluation
    guidance: float = 3.0
    parallel: bool = True
    smoke: bool = False

    @classmethod
    def smoke_plan(cls) -> "Plan":
        return cls(n_scenes=24, n_examples=40, n_eval=8, n_pairs=16,
                   steps=dict(vit=2, vae=2, llm=2, detok1=2, detok2=2, lora=1),
                   minutes=dict(vit=5, vae=5, llm=5, detok1=5, detok2=5, lora=5),
                   batch=dict(vit=8, vae=4, llm=2, detok1=4, detok2=4, lora=2),
                   warmup=1, ckpt_every=1, log_every=1, lora_rank=4, eval_samples=2,
                   sample_steps=2, parallel=False, smoke=True)


def _parse_kv(text: str | None, cast: Callable) -> dict:
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, _, value = item.partition("=")
            if key.strip() not in TRAINED:
                raise SystemExit(f"unknown stage {key!r} in {text!r}; stages with steps: {TRAINED}")
            out[key.strip()] = cast(value)
    return out


# =================================================================================================
# Small utilities: logging, determinism, atomic files, signals
# =================================================================================================

_T0 = time.time()


def say(stage: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - _T0) / 60:6.1f}m] [{stage}] {message}",
          flush=True)


def step_seed(seed: int, stage: str, step: int) -> int:
    digest = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, stage, step))


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_fp16(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
               for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


class Interrupted(Exception):
    """Raised after the checkpoint was written, when a stop was requested."""


class Stopper:
    """SIGINT/SIGTERM set a flag; the training loop checkpoints and raises `Interrupted`."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous = {}

    def install(self) -> "Stopper":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


STOPPER = Stopper()


# =================================================================================================
# Run context
# =================================================================================================

class Run:
    def __init__(self, out: Path, plan: Plan, interrupt_after: dict[str, int] | None = None):
        self.out = Path(out)
        self.plan = plan
        self.interrupt_after = interrupt_after or {}
        self._tokenizer = None

    def stage_dir(self, stage: str) -> Path:
        return self.out / "stages" / stage

    def done(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_done(self, stage: str, metrics: dict) -> None:
        atomic_write_json(self.stage_dir(stage) / "done.json", metrics)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    def tokenizer(self):
        from ..tokenizer import SeedXTokenizer

        if self._tokenizer is None:
            self._tokenizer = SeedXTokenizer.from_pretrained(self.data_dir / "tokenizer")
        return self._tokenizer

    def config(self) -> SeedXConfig:
        vae = self.done("vae")
        return nano_config(scaling_factor=vae["scaling_factor"] if vae else None,
                           vocab_size=len(self.tokenizer()))


# =================================================================================================
# Pixels
# =================================================================================================

_MEAN = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)


def to_uint8(image: Image.Image, size: int | None = None) -> torch.Tensor:
    image = image.convert("RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def clip_normalise(u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N,3,R,R) -> the ViT's CLIP-normalised input (what ``image_transform`` gives)."""
    return (u8.float() / 255 - _MEAN) / _STD


def vae_normalise(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR of two [0,1] batches."""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


# =================================================================================================
# Stage "data"
# =================================================================================================

def scene_label_map(scene) -> np.ndarray:
    """(H, W) uint8: 0 background, k for the k-th object (each object rendered alone)."""
    from .world import Scene

    empty = np.asarray(Scene(scene.width, scene.height, scene.background, ()).render())
    label = np.zeros((scene.height, scene.width), np.uint8)
    for k, obj in enumerate(scene.objects, 1):
        alone = np.asarray(Scene(scene.width, scene.height, scene.background, (obj,)).render())
        label[(alone != empty).any(-1)] = k
    return label


def cell_targets(label_view: np.ndarray, objects, grid: int = 8, min_cover: float = 0.25):
    """Per cell of a ``grid x grid`` split of one view: colour (0 = none, 1..6) and shape
    (0 = none, 1..3) of the object covering most of the cell (when it covers >= min_cover)."""
    r = label_view.shape[0]
    c = r // grid
    cells = label_view.reshape(grid, c, grid, c).transpose(0, 2, 1, 3).reshape(grid * grid, c * c)
    counts = np.stack([(cells == k).sum(1) for k in range(len(objects) + 1)], 1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    covered = counts.max(1) >= min_cover * c * c
    colour = np.zeros(grid * grid, np.int8)
    shape = np.zeros(grid * grid, np.int8)
    for i in np.where(covered)[0]:
        obj = objects[best[i] - 1]
        colour[i] = 1 + COLOUR_NAMES.index(obj.colour)
        shape[i] = 1 + SHAPE_NAMES.index(obj.shape)
    return colour, shape


def anyres_views_with_labels(scene, cfg: SeedXConfig):
    """Any-res views of a rendered scene (uint8), with per-cell labels cut the same way."""
    image = scene.render()
    ar = process_anyres_image(image, cfg.resolution_grids, cfg.base_resolution)
    label = Image.fromarray(scene_label_map(scene))
    r = cfg.base_resolution
    width, height = choose_resolution(image.size, parse_grids(cfg.resolution_grids, r))
    resized = label.resize((width, height), Image.Resampling.NEAREST)
    label_views = [resized.crop(box) for box in tile_boxes((width, height), r)]
    label_views.append(label.resize((r, r), Image.Resampling.NEAREST))
    out = []
    for view, lab in zip(ar.views, label_views):
        colour, shape = cell_targets(np.asarray(lab), scene.objects)
        out.append((to_uint8(view), colour, shape))
    return out


def example_record(ex, tok, cfg: SeedXConfig) -> dict:
    """Token ids, label start, any-res views of the input images, target/condition images."""
    q = cfg.num_img_tokens
    views, positions, blocks = [], [], []
    for image in ex.images:
        ar = process_anyres_image(image, cfg.resolution_grids, cfg.base_resolution)
        views += [to_uint8(v) for v in ar.views]
        positions.append(ar.patch_positions)
        blocks.append(image_token_block(ar.num_views, q))
    prompt = f"[INST] {''.join(blocks)}{ex.instruction} [/INST]\n"
    prompt_ids = [tok.bos_token_id] + tok.encode(prompt)
    answer_ids = tok.encode(ex.answer_text) if ex.answer_text else []
    gen_start = -1
    if ex.answer_image is not None:
        gen_start = len(prompt_ids) + len(answer_ids) + 1
        answer_ids += [tok.boi_token_id, *tok.img_token_ids[:q], tok.eoi_token_id]
    ids = prompt_ids + answer_ids + [tok.eos_token_id]
    r = cfg.base_resolution
    return dict(
        task=ex.task, variant=ex.variant, ids=torch.tensor(ids, dtype=torch.int32),
        n_prompt=len(prompt_ids), gen_start=gen_start,
        views=torch.stack(views) if views else torch.zeros(0, 3, r, r, dtype=torch.uint8),
        positions=torch.cat(positions) if positions else torch.zeros(0, 2),
        answer=to_uint8(ex.answer_image, r) if ex.answer_image is not None else None,
        condition=to_uint8(ex.condition_image, r) if ex.condition_image is not None else None,
    )


def pack_examples(records: list[dict]) -> dict:
    """Flat tensors + offsets (one file, fast to load) from per-example records."""
    r = NANO_RESOLUTION
    ids = [rec["ids"] for rec in records]
    nviews = [rec["views"].shape[0] for rec in records]
    answers = [rec["answer"] for rec in records if rec["answer"] is not None]
    conds = [rec["condition"] for rec in records if rec["condition"] is not None]
    answer_index, cond_index, a, c = [], [], 0, 0
    for rec in records:
        answer_index.append(a if rec["answer"] is not None else -1)
        a += rec["answer"] is not None
        cond_index.append(c if rec["condition"] is not None else -1)
        c += rec["condition"] is not None
    empty = torch.zeros(0, 3, r, r, dtype=torch.uint8)
    return dict(
        task=[rec["task"] for rec in records], variant=[rec["variant"] for rec in records],
        ids=torch.cat(ids), id_offsets=torch.tensor([0, *itertools.accumulate(len(i) for i in ids)]),
        n_prompt=torch.tensor([rec["n_prompt"] for rec in records]),
        gen_start=torch.tensor([rec["gen_start"] for rec in records]),
        views=torch.cat([rec["views"] for rec in records]) if records else empty,
        positions=torch.cat([rec["positions"] for rec in records]) if records else torch.zeros(0, 2),
        view_offsets=torch.tensor([0, *itertools.accumulate(nviews)]),
        answers=torch.stack(answers) if answers else empty,
        answer_index=torch.tensor(answer_index),
        conditions=torch.stack(conds) if conds else empty,
        condition_index=torch.tensor(cond_index),
    )


def train_tokenizer(out_dir: Path, seed_base: int) -> None:
    """A SentencePiece BPE model on the world's text + the 330 SEED-X tokens (official order).

    Deterministic: fixed examples, one thread, no sampling or shuffling. Llama's layout:
    <unk>=0, <s>=1, </s>=2, byte fallback, identity normalisation.
    """
    import sentencepiece as spm

    from ..tokenizer import SeedXTokenizer, TINY_TOKENIZER_DIR
    from . import tasks

    texts = []
    for ex in itertools.islice(tasks.iter_examples(seed_base), TOKENIZER_TEXT_EXAMPLES):
        for text in (ex.instruction, ex.answer_text):
            texts.append(re.sub(r"<[^>]*>", " ", text))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=TOKENIZER_VOCAB,
        model_type="bpe", byte_fallback=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, character_coverage=1.0, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        num_threads=1, minloglevel=2, hard_vocab_limit=True, input_sentence_size=0,
        shuffle_input_sentence=False, max_sentence_length=8192)
    base = SeedXTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    added_order = sorted(base.added_tokens, key=base.added_tokens.get)  # the official order
    added = {tok: TOKENIZER_VOCAB + i for i, tok in enumerate(added_order)}
    tok = SeedXTokenizer(model.getvalue(), added, base._special_tokens_map, base._tokenizer_config)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def stage_data(run: Run) -> dict:
    from . import tasks, world

    plan, d = run.plan, run.data_dir
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if not (d / "tokenizer" / "tokenizer.model").is_file():
        train_tokenizer(d / "tokenizer", tasks.TRAIN_SEED_BASE)
    tok = run.tokenizer()
    cfg = run.config()
    say("data", f"tokenizer: {tok.vocab_size} pieces + {len(tok.added_tokens)} added = {len(tok)}")

    # 1. views of random scenes with dense labels (ViT, VAE, de-tokenizer stage 1)
    def scenes(base: int, n: int, split: str) -> dict:
        views, colours, shapes, is_global = [], [], [], []
        for i in range(n):
            scene = world.random_scene(random.Random(f"nano-scene/{split}/{base + i}"))
            items = anyres_views_with_labels(scene, cfg)
            for j, (u8, colour, shape) in enumerate(items):
                views.append(u8)
                colours.append(torch.from_numpy(colour))
                shapes.append(torch.from_numpy(shape))
                is_global.append(j == len(items) - 1)
        return dict(views=torch.stack(views), colour=torch.stack(colours),
                    shape=torch.stack(shapes), is_global=torch.tensor(is_global))

    seed = plan.seed
    for split, base, n in (("train", seed * 10**7, plan.n_scenes),
                           ("eval", tasks.EVAL_SEED_BASE + seed * 10**7, plan.n_eval)):
        path = d / f"scenes_{split}.pt"
        if not path.is_file():
            atomic_torch_save(scenes(base, n, split), path)
    say("data", f"scenes rendered ({time.time() - t0:.0f}s)")

    # 2. task examples (LLM; answer/condition images feed the de-tokenizers)
    def examples(seed0: int, n: int, task_names=None) -> dict:
        records = [example_record(ex, tok, cfg)
                   for ex in itertools.islice(tasks.iter_examples(seed0, task_names), n)]
        return pack_examples(records)

    pair_tasks = [t for t in tasks.TASKS if t in ("edit_recolor", "edit_remove", "edit_move",
                                                  "tryon", "improve")]
    jobs = (("examples_train", tasks.TRAIN_SEED_BASE + seed * 10**7, plan.n_examples, None),
            ("examples_eval", tasks.EVAL_SEED_BASE + seed * 10**7, plan.n_eval, None),
            ("pairs_train", tasks.TRAIN_SEED_BASE + 5 * 10**8 + seed * 10**7, plan.n_pairs, pair_tasks),
            ("pairs_eval", tasks.EVAL_SEED_BASE + 5 * 10**8 + seed * 10**7, max(8, plan.n_eval // 4),
             pair_tasks))
    for name, seed0, n, task_names in jobs:
        path = d / f"{name}.pt"
        if not path.is_file():
            atomic_torch_save(examples(seed0, n, task_names), path)
    sizes = {p.name: p.stat().st_size for p in d.glob("*.pt")}
    lengths = torch.load(d / "examples_train.pt", weights_only=False)["id_offsets"].diff().float()
    metrics = dict(seconds=round(time.time() - t0, 1), tokenizer_size=len(tok),
                   seq_len_mean=round(lengths.mean().item(), 1), seq_len_max=int(lengths.max()),
                   bytes=sizes)
    say("data", f"done: {metrics}")
    return metrics


# =================================================================================================
# The generic resumable training loop
# =================================================================================================

def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, constant, then linear decay to 10 % over the last 30 % of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(0.7 * total)
    if step < decay_start or total <= decay_start:
        return 1.0
    return 1.0 - 0.9 * (step - decay_start) / max(1, total - decay_start)


def train_loop(run: Run, stage: str, modules: dict[str, nn.Module], params: list[nn.Parameter],
               step_fn: Callable[[int, torch.Generator], dict[str, float]], *,
               steps_key: str | None = None, items_per_step: int = 1) -> dict:
    """Run ``step_fn`` until ``plan.steps[stage]`` or ``plan.minutes[stage]``; checkpoint and resume.

    The checkpoint (``<stage_dir>/ckpt.pt``) holds every module's state, the optimizer, the step,
    the elapsed time, the RNG states and the loss history; it is written atomically every
    ``ckpt_every`` steps, at the end and when a stop is requested (then `Interrupted` is raised).
    """
    plan = run.plan
    key = steps_key or stage
    total, minutes = plan.steps[key], plan.minutes[key]
    sdir = run.stage_dir(stage)
    ckpt_path = sdir / "ckpt.pt"
    optimizer = torch.optim.AdamW(params, lr=plan.lr[key], betas=(0.9, 0.99), weight_decay=0.0)
    step, elapsed, history = 0, 0.0, []
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False)
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        say(stage, f"resumed at step {step}/{total} ({elapsed / 60:.1f} min done)")

    def save() -> None:
        atomic_torch_save(dict(
            step=step, elapsed=elapsed, history=history,
            modules={name: m.state_dict() for name, m in modules.items()},
            optimizer=optimizer.state_dict(),
            rng=dict(torch=torch.get_rng_state(), python=random.getstate(),
                     numpy=np.random.get_state())), ckpt_path)

    for m in modules.values():
        m.train()
    budget = minutes * 60
    interrupt_at = run.interrupt_after.get(stage)
    started, window_t, window_n, run_steps = time.time(), time.time(), 0, 0
    sums: dict[str, float] = defaultdict(float)
    stopped_by = "steps"
    while step < total:
        if elapsed >= budget:
            stopped_by = "minutes"
            break
        t = time.time()
        for group in optimizer.param_groups:
            group["lr"] = plan.lr[key] * lr_factor(step, total, plan.warmup)
        losses = step_fn(step, step_generator(plan.seed, stage, step))
        loss = losses.pop("loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        run_steps += 1
        elapsed += time.time() - t
        window_n += 1
        sums["loss"] += loss.item()
        for k, v in losses.items():
            sums[k] += float(v)
        if step % plan.log_every == 0 or step == total:
            rate = window_n / max(1e-9, time.time() - window_t)
            means = {k: round(v / window_n, 5) for k, v in sums.items()}
            history.append(dict(step=step, **means))
            say(stage, f"step {step}/{total} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                + f" | {rate:.2f} it/s {rate * items_per_step:.1f} ex/s lr {optimizer.param_groups[0]['lr']:.2e}"
                + f" | {elapsed / 60:.1f}/{minutes} min")
            window_t, window_n, sums = time.time(), 0, defaultdict(float)
        if STOPPER.requested or (interrupt_at is not None and run_steps >= interrupt_at):
            save()
            say(stage, f"stopped at step {step} ({STOPPER.requested or 'interrupt_after'}); "
                       f"checkpoint written, rerun to resume")
            raise Interrupted(stage)
        if step % plan.ckpt_every == 0:
            save()
    save()
    for m in modules.values():
        m.eval()
    return dict(steps=step, minutes=round(elapsed / 60, 2), stopped_by=stopped_by,
                final=history[-1] if history else {}, wall_minutes_this_run=round((time.time() - started) / 60, 2))


def load_stage_modules(run: Run, stage: str) -> dict[str, dict]:
    """The fp32 module states of a finished stage (from its last checkpoint)."""
    return torch.load(run.stage_dir(stage) / "ckpt.pt", weights_only=False)["modules"]


# =================================================================================================
# Stage "vit": the visual tokenizer
# =================================================================================================

class ViTHeads(nn.Module):
    """Linear read-outs that make the ViT's tokens encode what and where.

    On the 64 raw tokens (one per 8x8-pixel cell of a 64 px view) and on the 16 ``vit_down``
    tokens (1x4 strips of cells: what the LLM regresses and the de-tokenizer reads): the colour
    (7-way) and shape (4-way) of the object covering each cell, and the cell's pixels at 4x4.
    """

    PIX = 4 * 4 * 3

    def __init__(self, dim: int):
        super().__init__()
        self.colour = nn.Linear(dim, 7)
        self.shape = nn.Linear(dim, 4)
        self.pixels = nn.Linear(dim, self.PIX)
        self.down_colour = nn.Linear(dim, 4 * 7)
        self.down_shape = nn.Linear(dim, 4 * 4)
        self.down_pixels = nn.Linear(dim, 4 * self.PIX)


def cell_pixels(u8: torch.Tensor) -> torch.Tensor:
    """(N,3,64,64) uint8 -> (N, 64 cells, 48): each 8x8 cell averaged to 4x4 RGB in [0,1]."""
    x = F.avg_pool2d(u8.float() / 255, 2)  # (N,3,32,32)
    n = x.shape[0]
    x = x.view(n, 3, 8, 4, 8, 4).permute(0, 2, 4, 3, 5, 1)  # (N, gy, gx, 4, 4, 3)
    return x.reshape(n, 64, ViTHeads.PIX)


def vit_losses(vit: nn.Module, heads: ViTHeads, u8: torch.Tensor, colour: torch.Tensor,
               shape: torch.Tensor) -> dict[str, torch.Tensor]:
    from ..detokenizer import vit_down

    tokens = vit(clip_normalise(u8))  # (N, 64, D)
    pix = cell_pixels(u8)
    colour, shape = colour.long(), shape.long()
    out = dict(
        colour=F.cross_entropy(heads.colour(tokens).flatten(0, 1), colour.flatten(), ignore_index=IGNORE),
        shape=F.cross_entropy(heads.shape(tokens).flatten(0, 1), shape.flatten(), ignore_index=IGNORE),
        pixels=F.mse_loss(heads.pixels(tokens), pix) * 10)
    down = vit_down(tokens)  # (N, 16, D): token j pools cells 4j..4j+3
    n = u8.shape[0]
    out["down_colour"] = F.cross_entropy(heads.down_colour(down).view(n, 64, 7).flatten(0, 1),
                                         colour.flatten(), ignore_index=IGNORE)
    out["down_shape"] = F.cross_entropy(heads.down_shape(down).view(n, 64, 4).flatten(0, 1),
                                        shape.flatten(), ignore_index=IGNORE)
    out["down_pixels"] = F.mse_loss(heads.down_pixels(down).view(n, 64, -1), pix) * 10
    out["_tokens"] = tokens
    return out


@torch.no_grad()
def vit_probe(vit, heads, data: dict, batch: int = 128) -> dict:
    """Held-out accuracies of the linear read-outs, per cell (object cells only for shape)."""
    from ..detokenizer import vit_down

    vit.eval()
    hits = defaultdict(float)
    n_cells = n_obj = 0
    for i in range(0, data["views"].shape[0], batch):
        u8 = data["views"][i:i + batch]
        colour, shape = data["colour"][i:i + batch].long(), data["shape"][i:i + batch].long()
        tokens = vit(clip_normalise(u8))
        down = vit_down(tokens)
        n = u8.shape[0]
        obj = colour > 0
        preds = dict(cell=(heads.colour(tokens).argmax(-1), heads.shape(tokens).argmax(-1)),
                     down=(heads.down_colour(down).view(n, 64, 7).argmax(-1),
                           heads.down_shape(down).view(n, 64, 4).argmax(-1)))
        for name, (pc, ps) in preds.items():
            hits[f"{name}_colour_acc"] += (pc == colour).sum().item()
            hits[f"{name}_colour_acc_objects"] += (pc == colour)[obj].sum().item()
            hits[f"{name}_shape_acc_objects"] += (ps == shape)[obj].sum().item()
        n_cells += colour.numel()
        n_obj += obj.sum().item()
    return {k: round(v / (n_cells if k.endswith("_acc") else max(1, n_obj)), 4) for k, v in hits.items()}


def build_vit(cfg: SeedXConfig, seed: int) -> nn.Module:
    from ..qwen_vit import VisionTransformerWithAttnPool

    torch.manual_seed(seed)
    vit = VisionTransformerWithAttnPool(**cfg.vit)
    vit.transformer.gradient_checkpointing = False  # recomputation only costs time on a CPU
    return vit


def stage_vit(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    train = torch.load(run.data_dir / "scenes_train.pt", weights_only=False)
    examples = torch.load(run.data_dir / "examples_train.pt", weights_only=False)
    # Views of the task pictures (people, swatches, pages, drawings): pixel targets only.
    extra = torch.cat([examples["views"], examples["answers"]])
    n_scene, n_extra = train["views"].shape[0], extra.shape[0]
    vit = build_vit(cfg, plan.seed)
    torch.manual_seed(plan.seed + 100)
    heads = ViTHeads(cfg.vit["output_dim"])
    b = plan.batch["vit"]
    n_from_extra = b // 4 if n_extra else 0

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n_scene, (b - n_from_extra,), generator=g)
        u8, colour, shape = train["views"][idx], train["colour"][idx], train["shape"][idx]
        if n_from_extra:
            jdx = torch.randint(0, n_extra, (n_from_extra,), generator=g)
            u8 = torch.cat([u8, extra[jdx]])
            unknown = torch.full((n_from_extra, 64), IGNORE, dtype=torch.int8)
            colour, shape = torch.cat([colour, unknown]), torch.cat([shape, unknown])
        losses = vit_losses(vit, heads, u8, colour, shape)
        losses.pop("_tokens")
        total = sum(losses.values())
        return dict(loss=total, **{k: v.item() for k, v in losses.items()})

    params = list(vit.parameters()) + list(heads.parameters())
    result = train_loop(run, "vit", dict(vit=vit, heads=heads), params, step_fn, items_per_step=b)
    evald = torch.load(run.data_dir / "scenes_eval.pt", weights_only=False)
    result["probe_heldout"] = vit_probe(vit, heads, evald)
    save_fp16(vit.state_dict(), run.stage_dir("vit") / "vit.fp16.safetensors")
    say("vit", f"held-out probe: {result['probe_heldout']}")
    return result


def frozen_vit(run: Run) -> nn.Module:
    vit = build_vit(run.config(), run.plan.seed)
    vit.load_state_dict(load_stage_modules(run, "vit")["vit"])
    return vit.eval().requires_grad_(False)


# =================================================================================================
# Stage "vae"
# =================================================================================================

def build_vae(cfg: SeedXConfig, seed: int) -> nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 4)
    return AutoencoderKL.from_config(dict(cfg.vae))


@torch.no_grad()
def vae_eval(vae, images_u8: torch.Tensor, batch: int = 64) -> dict:
    vae.eval()
    values, lat = [], []
    for i in range(0, images_u8.shape[0], batch):
        x = vae_normalise(images_u8[i:i + batch])
        z = vae.encode(x).latent_dist.mode()
        rec = vae.decode(z).sample.clamp(-1, 1)
        values.append(psnr((rec + 1) / 2, (x + 1) / 2))
        lat.append(z)
    lat = torch.cat(lat)
    return dict(psnr=round(torch.cat(values).mean().item(), 2),
                psnr_min=round(torch.cat(values).min().item(), 2),
                latent_std=round(lat.std().item(), 4), latent_mean=round(lat.mean().item(), 4),
                scaling_factor=round(1.0 / lat.std().item(), 5))


def stage_vae(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    train = torch.load(run.data_dir / "scenes_train.pt", weights_only=False)["views"]
    examples = torch.load(run.data_dir / "examples_train.pt", weights_only=False)
    pictures = torch.cat([train, examples["answers"], examples["conditions"], examples["views"]])
    vae = build_vae(cfg, plan.seed)
    b = plan.batch["vae"]
    n = pictures.shape[0]

    def step_fn(step: int, g: torch.Generator) -> dict:
        x = vae_normalise(pictures[torch.randint(0, n, (b,), generator=g)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        l1 = (rec - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        return dict(loss=mse + 0.1 * l1 + 1e-4 * kl, mse=mse.item(), l1=l1.item(), kl=kl.item())

    result = train_loop(run, "vae", dict(vae=vae), list(vae.parameters()), step_fn, items_per_step=b)
    evald = torch.load(run.data_dir / "scenes_eval.pt", weights_only=False)["views"]
    examples_eval = torch.load(run.data_dir / "examples_eval.pt", weights_only=False)
    held = torch.cat([evald, examples_eval["answers"]])
    result["heldout"] = vae_eval(vae, held)
    result["scaling_factor"] = result["heldout"]["scaling_factor"]
    result["psnr"] = result["heldout"]["psnr"]
    vae.register_to_config(scaling_factor=result["scaling_factor"])
    save_fp16(vae.state_dict(), run.stage_dir("vae") / "vae.fp16.safetensors")
    say("vae", f"held-out: {result['heldout']}")
    return result


def frozen_vae(run: Run) -> nn.Module:
    vae = build_vae(run.config(), run.plan.seed)
    vae.load_state_dict(load_stage_modules(run, "vae")["vae"])
    return vae.eval().requires_grad_(False)


# =================================================================================================
# Stage "features": frozen encoders -> caches
# =================================================================================================

@torch.no_grad()
def encode_vit(vit, u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = [vit(clip_normalise(u8[i:i + batch])).to(torch.float16) for i in range(0, u8.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, 64, vit.output_dim, dtype=torch.float16)


@torch.no_grad()
def encode_vae(vae, u8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    out = [vae.encode(vae_normalise(u8[i:i + batch])).latent_dist.mode()
           for i in range(0, u8.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, 4, 16, 16)


def stage_features(run: Run) -> dict:
    from ..detokenizer import vit_down

    vit, vae = frozen_vit(run), frozen_vae(run)
    t0 = time.time()
    d, fdir = run.data_dir, run.out / "features"
    fdir.mkdir(parents=True, exist_ok=True)
    negative = vit_down(vit(negative_pixel_values(run.config().base_resolution))).float()
    for split in ("train", "eval"):
        ex = torch.load(d / f"examples_{split}.pt", weights_only=False)
        atomic_torch_save(dict(views=encode_vit(vit, ex["views"]), answers=encode_vit(vit, ex["answers"])),
                          fdir / f"examples_{split}.pt")
        scenes = torch.load(d / f"scenes_{split}.pt", weights_only=False)
        glob = scenes["views"][scenes["is_global"]]
        # De-tokenizer stage 1: global views of scenes + every answer picture (drawings, pages,
        # edited scenes, dressed people), all 64x64.
        pics = torch.cat([glob, ex["answers"]])
        atomic_torch_save(dict(images=pics, feats=vit_down(encode_vit(vit, pics).float()).half(),
                               latents=encode_vae(vae, pics), negative=negative),
                          fdir / f"detok1_{split}.pt")
        pairs = torch.load(d / f"pairs_{split}.pt", weights_only=False)
        keep = (pairs["answer_index"] >= 0) & (pairs["condition_index"] >= 0)
        tgt = pairs["answers"][pairs["answer_index"][keep]]
        src = pairs["conditions"][pairs["condition_index"][keep]]
        # also the edit/try-on examples of the LLM set
        keep2 = (ex["answer_index"] >= 0) & (ex["condition_index"] >= 0)
        tgt = torch.cat([tgt, ex["answers"][ex["answer_index"][keep2]]])
        src = torch.cat([src, ex["conditions"][ex["condition_index"][keep2]]])
        atomic_torch_save(dict(targets=tgt, sources=src,
                               feats=vit_down(encode_vit(vit, tgt).float()).half(),
                               target_latents=encode_vae(vae, tgt), source_latents=encode_vae(vae, src),
                               negative=negative), fdir / f"detok2_{split}.pt")
    metrics = dict(seconds=round(time.time() - t0, 1))
    say("features", f"done: {metrics}")
    return metrics


# =================================================================================================
# Stage "llm": ContinuousLVLM pre-training
# =================================================================================================

def build_agent(cfg: SeedXConfig, seed: int) -> nn.Module:
    from ..mllm import ContinuousLVLM

    torch.manual_seed(seed + 1)
    return ContinuousLVLM.from_config(cfg)


class LLMData:
    """Cached examples -> padded batches with every mask ``ContinuousLVLM.forward`` needs."""

    def __init__(self, run: Run, split: str, variant: str | None = None):
        self.ex = torch.load(run.data_dir / f"examples_{split}.pt", weights_only=False)
        self.feats = torch.load(run.out / "features" / f"examples_{split}.pt", weights_only=False)
        self.tok = run.tokenizer()
        self.q = run.config().num_img_tokens
        n = len(self.ex["task"])
        self.indices = [i for i in range(n) if variant is None or self.ex["variant"][i] == variant]

    def __len__(self) -> int:
        return len(self.indices)

    def sample(self, b: int, g: torch.Generator) -> list[int]:
        pick = torch.randint(0, len(self.indices), (b,), generator=g).tolist()
        return [self.indices[i] for i in pick]

    def batch(self, idx: list[int]) -> dict:
        from ..mllm import ContinuousLVLM

        ex, tok, q = self.ex, self.tok, self.q
        seqs = [ex["ids"][ex["id_offsets"][i]:ex["id_offsets"][i + 1]].long() for i in idx]
        s = max(len(x) for x in seqs)
        b = len(idx)
        input_ids = torch.zeros(b, s, dtype=torch.long)
        attention_mask = torch.zeros(b, s, dtype=torch.long)
        labels = torch.full((b, s), IGNORE, dtype=torch.long)
        ids_gen_mask = torch.zeros(b, s, dtype=torch.bool)
        prompt_mask = torch.zeros(b, s, dtype=torch.bool)
        cmp_feats, cmp_pos, gen_feats = [], [], []
        for row, (i, seq) in enumerate(zip(idx, seqs)):
            n = len(seq)
            input_ids[row, :n] = seq
            attention_mask[row, :n] = 1
            n_prompt = int(ex["n_prompt"][i])
            labels[row, n_prompt:n] = seq[n_prompt:]
            prompt_mask[row, :n_prompt] = True
            g0 = int(ex["gen_start"][i])
            if g0 >= 0:
                labels[row, g0:g0 + q + 1] = IGNORE  # placeholders and </img> are forced
                ids_gen_mask[row, g0:g0 + q] = True
                gen_feats.append(self.feats["answers"][int(ex["answer_index"][i])])
            v0, v1 = int(ex["view_offsets"][i]), int(ex["view_offsets"][i + 1])
            cmp_feats.append(self.feats["views"][v0:v1])
            cmp_pos.append(ex["positions"][v0:v1])
        ids_cmp_mask = ContinuousLVLM.build_ids_cmp_mask(
            input_ids, tok.boi_token_id, tok.eoi_token_id, tok.bop_token_id, tok.eop_token_id) & prompt_mask
        cmp = torch.cat(cmp_feats)
        gen = torch.stack(gen_feats) if gen_feats else cmp.new_zeros(0, *cmp.shape[1:])
        image_embeds = torch.cat([cmp, gen]).float()
        n_cmp, n_gen = cmp.shape[0], gen.shape[0]
        return dict(
            input_ids=input_ids, attention_mask=attention_mask, labels=labels,
            image_embeds=image_embeds if n_cmp + n_gen else None,
            embeds_cmp_mask=torch.tensor([True] * n_cmp + [False] * n_gen),
            embeds_gen_mask=torch.tensor([False] * n_cmp + [True] * n_gen),
            ids_cmp_mask=ids_cmp_mask, ids_gen_mask=ids_gen_mask,
            patch_positions=torch.cat(cmp_pos + [torch.full((n_gen, 2), 0.5)]))


@torch.no_grad()
def llm_eval(agent, data: LLMData, batch: int = 16) -> dict:
    """Held-out teacher-forced losses and answer-token accuracy (all, per task, loc tokens)."""
    agent.eval()
    loc_ids = torch.tensor(data.tok.loc_token_ids)
    sums = defaultdict(float)
    per_task = defaultdict(lambda: [0, 0])
    n_batches = 0
    for start in range(0, len(data), batch):
        idx = data.indices[start:start + batch]
        inputs = data.batch(idx)
        out = agent(**inputs)
        sums["lm_loss"] += out["lm_loss"].item()
        sums["rec_loss"] += out["rec_loss"].item()
        n_batches += 1
        pred = out["logits"][:, :-1].argmax(-1)
        gold = inputs["labels"][:, 1:]
        valid = gold != IGNORE
        right = (pred == gold) & valid
        is_loc = torch.isin(gold, loc_ids) & valid
        sums["tok_right"] += right.sum().item()
        sums["tok_all"] += valid.sum().item()
        sums["loc_right"] += (right & is_loc).sum().item()
        sums["loc_all"] += is_loc.sum().item()
        for row, i in enumerate(idx):
            task = data.ex["task"][i]
            # an answer is "exact" when every teacher-forced answer token is right
            per_task[task][0] += bool((right[row] == valid[row]).all())
            per_task[task][1] += 1
    return dict(lm_loss=round(sums["lm_loss"] / max(1, n_batches), 4),
                rec_loss=round(sums["rec_loss"] / max(1, n_batches), 5),
                token_acc=round(sums["tok_right"] / max(1, sums["tok_all"]), 4),
                loc_token_acc=round(sums["loc_right"] / max(1, sums["loc_all"]), 4),
                teacher_forced_exact=dict(sorted((t, round(a / n, 3)) for t, (a, n) in per_task.items())))


@torch.no_grad()
def llm_generation_eval(run: Run, agent, n: int = 48) -> dict:
    """Greedy answers on held-out comprehension examples, scored with ``metrics``.

    Grounding mIoU ("where", "find_all"), caption attribute accuracy, counting accuracy.
    """
    from ..generation import generate
    from ..mllm import ContinuousLVLM
    from . import metrics, tasks

    cfg, tok = run.config(), run.tokenizer()
    vit = frozen_vit(run)
    agent.eval()
    scores = defaultdict(list)
    names = ("where", "find_all", "describe", "count")
    per = max(1, n // len(names))
    for k, task in enumerate(names):
        for j, ex in enumerate(itertools.islice(tasks.iter_examples(tasks.EVAL_SEED_BASE + 7 * 10**8 + k * 10**5,
                                                                    [task]), per)):
            ar = process_anyres_image(ex.images[0], cfg.resolution_grids, cfg.base_resolution)
            prompt = f"[INST] {image_token_block(ar.num_views, cfg.num_img_tokens)}{ex.instruction} [/INST]\n"
            ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt)])
            feats = vit(ar.pixel_values)
            ids_cmp_mask = ContinuousLVLM.build_ids_cmp_mask(
                ids, tok.boi_token_id, tok.eoi_token_id, tok.bop_token_id, tok.eop_token_id)
            result = generate(agent, tok, ids, image_embeds=feats,
                              embeds_cmp_mask=torch.ones(feats.shape[0], dtype=torch.bool),
                              ids_cmp_mask=ids_cmp_mask,
                              patch_positions=ar.patch_positions, max_new_tokens=48,
                              num_img_gen_tokens=cfg.num_img_tokens)
            text = result.text
            scene = ex.meta["scene"]
            if task in ("where", "find_all"):
                boxes = tasks.parse_boxes(text, scene.width, scene.height)
                scores["grounding_miou"].append(metrics.grounding_iou(boxes, ex.meta["boxes"]))
            elif task == "describe":
                scores["caption_attr_acc"].append(metrics.caption_attr_accuracy(text, scene))
            else:
                scores["count_acc"].append(float(metrics.count_correct(text, scene)))
            if j == 0:
                scores.setdefault("samples", []).append(f"{ex.instruction} -> {text!r}")
    return {k: (round(float(np.mean(v)), 4) if k != "samples" else v) for k, v in scores.items()}


def stage_llm(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    agent = build_agent(cfg, plan.seed)
    data = LLMData(run, "train")
    b = plan.batch["llm"]

    def step_fn(step: int, g: torch.Generator) -> dict:
        out = agent(**data.batch(data.sample(b, g)))
        return dict(loss=out["total_loss"], lm=out["lm_loss"].item(), rec=out["rec_loss"].item())

    result = train_loop(run, "llm", dict(agent=agent), list(agent.parameters()), step_fn,
                        items_per_step=b)
    result["heldout"] = llm_eval(agent, LLMData(run, "eval"))
    say("llm", f"held-out: {result['heldout']}")
    try:
        result["generation"] = llm_generation_eval(run, agent, n=8 if plan.smoke else 48)
        say("llm", f"generation: {result['generation']}")
    except Exception as err:  # an evaluation problem must not lose the trained stage
        result["generation"] = dict(error=repr(err))
        say("llm", f"generation eval failed: {err!r}")
    save_fp16(agent.state_dict(), run.stage_dir("llm") / "agent.fp16.safetensors")
    return result


def trained_agent(run: Run) -> nn.Module:
    agent = build_agent(run.config(), run.plan.seed)
    agent.load_state_dict(load_stage_modules(run, "llm")["agent"])
    return agent


# =================================================================================================
# Stages "detok1" / "detok2": the de-tokenizer
# =================================================================================================

def build_adapter(cfg: SeedXConfig, seed: int, stage: int) -> nn.Module:
    from ..detokenizer import SDXLAdapter, SDXLAdapterWithLatentImage
    from ..detokenizer_resampler import ResamplerXLV2
    from ..stack import build_unet

    torch.manual_seed(seed + 1 + stage)
    unet, resampler = build_unet(cfg.unet), ResamplerXLV2(**cfg.detokenizer_resampler)
    # From scratch, so the whole UNet trains (upstream stage 1 only tuned to_k/to_v of SDXL).
    if stage == 1:
        return SDXLAdapter(unet, resampler, full_ft=True)
    return SDXLAdapterWithLatentImage(unet, resampler, full_ft=True)


def _alphas_cumprod(cfg: SeedXConfig) -> torch.Tensor:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(dict(cfg.scheduler)).alphas_cumprod.float()


def _time_ids(cfg: SeedXConfig, b: int) -> torch.Tensor:
    r = cfg.image_size
    return torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(b, 1)


def detok_loss(adapter, cfg, ac, x0, feats, negative, g, p_uncond, source=None) -> dict:
    """Epsilon-prediction loss at a uniform timestep, SDXL-style conditioning, CFG dropout.

    ``source`` (stage 2): the condition latents (``latent_dist.mode()``, unscaled, the IP2P
    convention ``encode_source_image`` uses), dropped to zeros independently of the features.
    """
    b = x0.shape[0]
    drop = torch.rand(b, generator=g) < p_uncond
    feats = torch.where(drop[:, None, None], negative.expand(b, -1, -1), feats)
    t = torch.randint(0, ac.numel(), (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = ac[t].view(b, 1, 1, 1)
    sample = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if source is not None:
        drop_src = torch.rand(b, generator=g) < p_uncond
        source = torch.where(drop_src[:, None, None, None], torch.zeros_like(source), source)
        sample = torch.cat([sample, source], dim=1)
    prompt_embeds, pooled = adapter.resampler(feats)
    eps = adapter.unet(sample, t, encoder_hidden_states=prompt_embeds,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": _time_ids(cfg, b)}).sample
    return dict(loss=F.mse_loss(eps, noise))


def _attach_pipe(run: Run, adapter) -> None:
    from ..stack import load_scheduler

    cfg = run.config()
    adapter.init_pipe(vae=frozen_vae(run), scheduler=load_scheduler(scheduler=cfg.scheduler),
                      vit=frozen_vit(run))


def _objects_match(image: Image.Image, objects) -> tuple[float, float]:
    """(fraction of ground-truth objects found with the right colour and shape, count right)."""
    from .analyser import analyse

    found = [(d.colour, d.shape) for d in analyse(image, tolerant=True)]
    want = [(o.colour, o.shape) for o in objects]
    hit = 0
    pool = list(found)
    for w in want:
        if w in pool:
            pool.remove(w)
            hit += 1
    return hit / max(1, len(want)), float(len(found) == len(want))


@torch.no_grad()
def detok1_eval(run: Run, adapter) -> dict:
    """Sample held-out drawings from ground-truth ViT features; score with the analyser.

    Reported against the VAE's own reconstructions of the same pictures (the ceiling).
    """
    from . import tasks

    plan, cfg = run.plan, run.config()
    _attach_pipe(run, adapter)
    adapter.eval()
    vit = adapter.vit
    from ..detokenizer import vit_down

    exs = list(itertools.islice(tasks.iter_examples(tasks.EVAL_SEED_BASE + 8 * 10**8, ["draw"]),
                                plan.eval_samples))
    pics = torch.stack([to_uint8(ex.answer_image, cfg.base_resolution) for ex in exs])
    feats = vit_down(vit(clip_normalise(pics)))
    embeds = adapter.get_image_embeds(image_embeds=feats)
    images = adapter.generate_from_embeds(embeds, seed=plan.seed, height=cfg.image_size,
                                          width=cfg.image_size, num_inference_steps=plan.sample_steps,
                                          guidance_scale=plan.guidance)
    recon = adapter.decode_latents(adapter.vae.encode(vae_normalise(pics)).latent_dist.mode()
                                   * adapter.vae.config.scaling_factor)
    attr, cnt, attr_vae = [], [], []
    for ex, img, rec in zip(exs, images, recon):
        objects = ex.meta["scene"].objects
        a, c = _objects_match(img, objects)
        attr.append(a)
        cnt.append(c)
        attr_vae.append(_objects_match(rec, objects)[0])
    sample_dir = run.stage_dir("detok1") / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    _grid([ex.answer_image.resize((64, 64)) for ex in exs[:8]] + images[:8]).save(sample_dir / "draw.png")
    return dict(draw_attr_acc_from_vit_features=round(float(np.mean(attr)), 4),
                draw_count_acc=round(float(np.mean(cnt)), 4),
                vae_ceiling_attr_acc=round(float(np.mean(attr_vae)), 4), n=len(exs))


def _grid(images: list[Image.Image], cols: int = 8) -> Image.Image:
    w, h = images[0].size
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (cols * w, rows * h), (255, 255, 255))
    for k, im in enumerate(images):
        grid.paste(im.resize((w, h)), ((k % cols) * w, (k // cols) * h))
    return grid


def stage_detok1(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    adapter = build_adapter(cfg, plan.seed, 1)
    data = torch.load(run.out / "features" / "detok1_train.pt", weights_only=False)
    sf = float(cfg.vae["scaling_factor"])
    latents, feats, negative = data["latents"] * sf, data["feats"], data["negative"]
    ac = _alphas_cumprod(cfg)
    b, n = plan.batch["detok1"], latents.shape[0]

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n, (b,), generator=g)
        return detok_loss(adapter, cfg, ac, latents[idx], feats[idx].float(), negative, g, plan.p_uncond)

    params = [p for p in adapter.parameters() if p.requires_grad]
    result = train_loop(run, "detok1", dict(adapter=adapter), params, step_fn, items_per_step=b)
    save_fp16(adapter.state_dict(), run.stage_dir("detok1") / "adapter.fp16.safetensors")
    try:
        result["heldout"] = detok1_eval(run, adapter)
        say("detok1", f"held-out: {result['heldout']}")
    except Exception as err:
        result["heldout"] = dict(error=repr(err))
        say("detok1", f"eval failed: {err!r}")
    return result


@torch.no_grad()
def detok2_eval(run: Run, adapter) -> dict:
    """Held-out edits / try-on from ground-truth target features + source latent: PSNR to the
    target at 64 px, and the analyser's object match on scene edits."""
    plan, cfg = run.plan, run.config()
    _attach_pipe(run, adapter)
    adapter.eval()
    data = torch.load(run.out / "features" / "detok2_eval.pt", weights_only=False)
    n = min(plan.eval_samples, data["targets"].shape[0])
    embeds = adapter.get_image_embeds(image_embeds=data["feats"][:n].float())
    sources = [Image.fromarray(data["sources"][i].permute(1, 2, 0).numpy()) for i in range(n)]
    images = adapter.generate_from_embeds(embeds, latent_image=sources, seed=plan.seed,
                                          height=cfg.image_size, width=cfg.image_size,
                                          num_inference_steps=plan.sample_steps,
                                          guidance_scale=plan.guidance)
    out = torch.stack([to_uint8(im) for im in images]).float() / 255
    target = data["targets"][:n].float() / 255
    source = data["sources"][:n].float() / 255
    sample_dir = run.stage_dir("detok2") / "samples"
    sample_dir.mkdir(parents=True, exist_ok=True)
    _grid(sources[:8] + [Image.fromarray(data["targets"][i].permute(1, 2, 0).numpy()) for i in range(min(8, n))]
          + images[:8]).save(sample_dir / "edits.png")
    return dict(psnr_to_target=round(psnr(out, target).mean().item(), 2),
                psnr_source_to_target=round(psnr(source, target).mean().item(), 2), n=n)


def stage_detok2(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    adapter = build_adapter(cfg, plan.seed, 2)
    # Initialise from stage 1: every weight, conv_in widened with zeros on the 4 new channels.
    stage1 = load_stage_modules(run, "detok1")["adapter"]
    w = stage1["unet.conv_in.weight"]
    widened = torch.zeros(w.shape[0], 8, *w.shape[2:])
    widened[:, :4] = w
    adapter.load_state_dict({**stage1, "unet.conv_in.weight": widened})
    data = torch.load(run.out / "features" / "detok2_train.pt", weights_only=False)
    sf = float(cfg.vae["scaling_factor"])
    targets, sources = data["target_latents"] * sf, data["source_latents"]
    feats, negative = data["feats"], data["negative"]
    ac = _alphas_cumprod(cfg)
    b, n = plan.batch["detok2"], targets.shape[0]

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n, (b,), generator=g)
        return detok_loss(adapter, cfg, ac, targets[idx], feats[idx].float(), negative, g,
                          plan.p_uncond, source=sources[idx])

    params = [p for p in adapter.parameters() if p.requires_grad]
    result = train_loop(run, "detok2", dict(adapter=adapter), params, step_fn, items_per_step=b)
    save_fp16(adapter.state_dict(), run.stage_dir("detok2") / "adapter.fp16.safetensors")
    try:
        result["heldout"] = detok2_eval(run, adapter)
        say("detok2", f"held-out: {result['heldout']}")
    except Exception as err:
        result["heldout"] = dict(error=repr(err))
        say("detok2", f"eval failed: {err!r}")
    return result


# =================================================================================================
# Stage "lora": one peft adapter per variant on the pre-trained LLM
# =================================================================================================

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_variants(run: Run) -> list[str]:
    from . import tasks

    return sorted(set(tasks.TASKS.values()))


def stage_lora(run: Run) -> dict:
    from peft import LoraConfig, get_peft_model

    plan = run.plan
    results = {}
    base_state = load_stage_modules(run, "llm")["agent"]
    for variant in lora_variants(run):
        sub = f"lora_{variant}"
        if run.done(sub):
            results[variant] = run.done(sub)
            continue
        agent = build_agent(run.config(), plan.seed)
        agent.load_state_dict(base_state)
        agent.requires_grad_(False)
        torch.manual_seed(plan.seed + 10)
        lcfg = LoraConfig(r=plan.lora_rank, lora_alpha=plan.lora_rank, lora_dropout=0.0,
                          target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
        agent.llm = get_peft_model(agent.llm, lcfg)
        data = LLMData(run, "train", variant)
        if len(data) == 0:
            say("lora", f"{variant}: no training examples, skipped")
            continue
        b = plan.batch["lora"]

        def step_fn(step: int, g: torch.Generator, agent=agent, data=data) -> dict:
            out = agent(**data.batch(data.sample(b, g)))
            return dict(loss=out["total_loss"], lm=out["lm_loss"].item(), rec=out["rec_loss"].item())

        params = [p for p in agent.parameters() if p.requires_grad]
        lora_modules = {"lora": _LoraView(agent)}
        result = train_loop(run, sub, lora_modules, params, step_fn, steps_key="lora", items_per_step=b)
        evald = LLMData(run, "eval", variant)
        if len(evald):
            result["heldout"] = llm_eval(agent, evald)
        out_dir = run.stage_dir("lora") / "adapters" / variant
        agent.llm.to(torch.float16)
        agent.llm.save_pretrained(str(out_dir), safe_serialization=True)
        agent.llm.to(torch.float32)
        run.mark_done(sub, result)
        results[variant] = result
        say("lora", f"{variant}: {result.get('heldout')}")
    return dict(variants=results)


class _LoraView(nn.Module):
    """The LoRA tensors of a peft-wrapped agent, as one module for checkpointing."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.__dict__["agent"] = agent

    def state_dict(self, *args, **kwargs):
        return {k: v.detach().clone() for k, v in self.agent.named_parameters() if v.requires_grad}

    def load_state_dict(self, state, strict: bool = True):
        params = dict(self.agent.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    def train(self, mode: bool = True):
        self.agent.train(mode)
        return self


# =================================================================================================
# Stage "export": the shipped tree
# =================================================================================================

def export(run: Run, target: Path) -> dict:
    """Write the finished stages into ``target`` in `SeedXStack.save_pretrained`'s layout.

    The stack is built from the Nano config, every *finished* component's weights are loaded,
    ``save_pretrained`` writes the whole tree to a scratch folder in fp16, and only the parts
    whose stages are finished are moved into ``target`` (unfinished parts are left out, never
    shipped random). ``adapters/<variant>/`` holds the peft folders of the finished adapters.
    """
    from .. import checkpoint as ckpt
    from ..stack import SeedXStack

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
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
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
        metrics={s: _summary(run.done(s)) for s in sorted(done)})
    atomic_write_json(staging / "nano_manifest.json", manifest)
    total = sum(p.stat().st_size for p in staging.rglob("*") if p.is_file())
    manifest["bytes"] = total
    atomic_write_json(staging / "nano_manifest.json", manifest)
    if total > SIZE_LIMIT_BYTES:
        say("export", f"WARNING: {total / 2**20:.1f} MiB exceeds the 40 MB budget")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    shutil.rmtree(scratch, ignore_errors=True)
    say("export", f"wrote {target} ({total / 2**20:.2f} MiB): stages {sorted(done)}, adapters {shipped_adapters}")
    return dict(bytes=total, finished_stages=sorted(done), adapters=shipped_adapters, target=str(target))


def _summary(done: dict | None) -> dict:
    if not done:
        return {}
    return {k: v for k, v in done.items() if k not in ("history",)}


# =================================================================================================
# Orchestration
# =================================================================================================

STAGE_FNS: dict[str, Callable[[Run], dict]] = {
    "data": stage_data, "vit": stage_vit, "vae": stage_vae, "features": stage_features,
    "llm": stage_llm, "detok1": stage_detok1, "detok2": stage_detok2, "lora": stage_lora,
}


def run_stage(run: Run, stage: str, export_dir: Path) -> None:
    if stage == "export":
        result = export(run, export_dir)
        run.mark_done("export", result)
        return
    if run.done(stage):
        say(stage, "already done, skipped")
        return
    say(stage, "start")
    t0 = time.time()
    result = STAGE_FNS[stage](run)
    result["stage_wall_minutes"] = round((time.time() - t0) / 60, 2)
    run.mark_done(stage, result)
    say(stage, "done")


def run_pipeline(run: Run, stages: list[str], export_dir: Path, argv_for_child: list[str]) -> None:
    lane_llm = [s for s in ("llm", "lora") if s in stages and not run.done(s)]
    lane_detok = [s for s in ("detok1", "detok2") if s in stages and not run.done(s)]
    child = None
    for stage in stages:
        if stage in ("llm", "lora", "detok1", "detok2") and child is None and run.plan.parallel \
                and lane_llm and lane_detok:
            # Two independent lanes: the LLM lane in a child process, one thread each.
            log_path = run.out / "lane_llm.log"
            cmd = [sys.executable, "-m", "core_models.nano.train", *argv_for_child,
                   "--stages", ",".join(lane_llm), "--threads", "1", "--no-parallel", "--no-export"]
            say("pipeline", f"LLM lane in a child process ({' '.join(lane_llm)}), log {log_path}")
            child = subprocess.Popen(cmd, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)
            torch.set_num_threads(1)
            for s in lane_detok:
                try:
                    run_stage(run, s, export_dir)
                except Interrupted:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    raise
            while child.poll() is None:
                if STOPPER.requested:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    raise Interrupted("pipeline")
                time.sleep(2)
            torch.set_num_threads(run.plan.threads)
            if child.returncode != 0:
                raise SystemExit(f"LLM lane failed with exit code {child.returncode}; see {log_path}")
            continue
        if child is not None and stage in ("llm", "lora", "detok1", "detok2"):
            continue
        run_stage(run, stage, export_dir)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m core_models.nano.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/nano"), help="run directory")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few steps per stage")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (in pipeline order)")
    parser.add_argument("--steps", help="per-stage step counts, e.g. vit=2000,llm=6000")
    parser.add_argument("--minutes", "--minutes-per-stage", dest="minutes",
                        help="per-stage minute caps, e.g. vae=40,detok1=110")
    parser.add_argument("--batch", help="per-stage batch sizes, e.g. llm=24")
    parser.add_argument("--lr", help="per-stage learning rates")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-scenes", type=int)
    parser.add_argument("--n-examples", type=int)
    parser.add_argument("--n-pairs", type=int)
    parser.add_argument("--n-eval", type=int)
    parser.add_argument("--eval-samples", type=int)
    parser.add_argument("--ckpt-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--parallel", dest="parallel", action="store_true", default=None)
    parser.add_argument("--no-parallel", dest="parallel", action="store_false")
    parser.add_argument("--no-export", action="store_true", help="skip the export stage")
    parser.add_argument("--export-dir", type=Path, default=None,
                        help=f"where export writes the shipped tree (default {EXPORT_DIR}; "
                             "--smoke: <out>/export)")
    parser.add_argument("--interrupt-after", help=argparse.SUPPRESS)  # tests: stage=N steps
    args = parser.parse_args(argv)

    plan = Plan.smoke_plan() if args.smoke else Plan()
    for name in ("steps", "minutes", "batch", "lr"):
        getattr(plan, name).update(_parse_kv(getattr(args, name), float if name in ("minutes", "lr") else int))
    for name in ("seed", "threads", "n_scenes", "n_examples", "n_pairs", "n_eval", "eval_samples",
                 "ckpt_every", "log_every", "parallel"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    stages = [s for s in STAGES if s in stages and not (args.no_export and s == "export")]
    export_dir = args.export_dir or (args.out / "export" if args.smoke else EXPORT_DIR)

    torch.set_num_threads(plan.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "plan.json", asdict(plan))
    run = Run(args.out, plan, _parse_kv(args.interrupt_after, int) if args.interrupt_after else None)
    # What a child lane needs to rebuild the same plan.
    child_argv = [a for a in argv]
    child_argv = _strip_options(child_argv, ("--stages", "--threads", "--export-dir"),
                                ("--parallel", "--no-parallel", "--no-export"))
    say("pipeline", f"stages {stages}, out {args.out}, threads {plan.threads}")
    STOPPER.install()
    try:
        run_pipeline(run, stages, export_dir, child_argv)
    except Interrupted as err:
        say("pipeline", f"interrupted in {err}; rerun the same command to resume")
        return 130
    finally:
        STOPPER.uninstall()
        STOPPER.requested = None
    say("pipeline", "finished")
    return 0


def _strip_options(argv: list[str], with_value: tuple[str, ...], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in with_value:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in with_value) or a in flags:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
