"""Stage ``data``: the tokenizer, and everything the other stages learn from, rendered once.

Scenes become any-res views (uint8 64x64, cut exactly as the product path cuts them) with
per-cell colour and shape labels for the ViT's dense read-outs; task examples become token ids,
views and target / condition pictures, packed into flat tensors with offsets (one file per split,
fast to load). Every file is rendered from fixed ``random.Random`` seeds (training seeds from
``tasks.TRAIN_SEED_BASE``, held-out ones from ``tasks.EVAL_SEED_BASE``), so a file that is
missing is re-rendered identically, and an existing one is never rewritten.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core_models.any_res import (choose_resolution, image_token_block, parse_grids,
                                 process_anyres_image, tile_boxes)
from core_models.config import SeedXConfig
from core_models.files import atomic_write

from .. import tasks, world
from ..config import NANO_RESOLUTION
from ..world import Scene
from .checkpoint import load_data, save_torch
from .pixels import to_uint8
from .run import Run, say

COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPE_NAMES = ("circle", "square", "triangle")
TOKENIZER_VOCAB = 600          # SentencePiece pieces (incl. 3 specials + 256 byte-fallback pieces)
TOKENIZER_TEXT_EXAMPLES = 2000  # examples whose text trains the tokenizer (fixed: deterministic)


def scene_label_map(scene) -> np.ndarray:
    """(H, W) uint8: 0 background, k for the k-th object (each object rendered alone)."""
    empty = np.asarray(Scene(scene.width, scene.height, scene.background, ()).render())
    label = np.zeros((scene.height, scene.width), np.uint8)
    for k, obj in enumerate(scene.objects, 1):
        alone = np.asarray(Scene(scene.width, scene.height, scene.background, (obj,)).render())
        label[(alone != empty).any(-1)] = k
    return label


def _covering(label_view: np.ndarray, n_objects: int, grid: int, min_cover: float):
    """Per cell: the label of the object covering most of it, 0 where none covers min_cover."""
    r = label_view.shape[0]
    c = r // grid
    cells = label_view.reshape(grid, c, grid, c).transpose(0, 2, 1, 3).reshape(grid * grid, c * c)
    counts = np.stack([(cells == k).sum(1) for k in range(n_objects + 1)], 1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < min_cover * c * c] = 0
    return best


def cell_targets(label_view: np.ndarray, objects, grid: int = 8, min_cover: float = 0.25):
    """Per cell of a ``grid x grid`` split of one view: colour (0 = none, 1..6) and shape
    (0 = none, 1..3) of the object covering most of the cell (when it covers >= min_cover)."""
    best = _covering(label_view, len(objects), grid, min_cover)
    colour = np.zeros(grid * grid, np.int8)
    shape = np.zeros(grid * grid, np.int8)
    for i in np.where(best > 0)[0]:
        obj = objects[best[i] - 1]
        colour[i] = 1 + COLOUR_NAMES.index(obj.colour)
        shape[i] = 1 + SHAPE_NAMES.index(obj.shape)
    return colour, shape


def cell_boxes(label_view: np.ndarray, n_objects: int, grid: int = 8, min_cover: float = 0.25):
    """(grid * grid, 4) float32: the box (x0, y0, x1, y1, in [0, 1] of the view) of what is
    visible in this view of the object covering each cell, -1 where no object covers it.

    On the global view this is the object's box in the picture's own normalised coordinates
    (the squeeze to a square keeps them), i.e. the grounding answer, as content of the token.
    """
    r = label_view.shape[0]
    best = _covering(label_view, n_objects, grid, min_cover)
    box = np.full((grid * grid, 4), -1.0, np.float32)
    for k in set(best.tolist()) - {0}:
        ys, xs = np.nonzero(label_view == k)
        box[best == k] = (xs.min() / r, ys.min() / r, (xs.max() + 1) / r, (ys.max() + 1) / r)
    return box


def anyres_views_with_labels(scene, cfg: SeedXConfig, boxes: bool = False):
    """Any-res views of a rendered scene (uint8), with per-cell labels cut the same way
    (colour, shape, and with ``boxes`` the covering object's box: `cell_boxes`)."""
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
        lab = np.asarray(lab)
        colour, shape = cell_targets(lab, scene.objects)
        item = (to_uint8(view), colour, shape)
        out.append(item + (cell_boxes(lab, len(scene.objects)),) if boxes else item)
    return out


def scene_seeds(plan, split: str) -> tuple[int, int]:
    """(first seed, count) of the scene views of ``split`` ("train" / "eval")."""
    if split == "train":
        return plan.seed * 10**7, plan.n_scenes
    return tasks.EVAL_SEED_BASE + plan.seed * 10**7, plan.n_eval


def render_scene(split: str, index: int):
    return world.random_scene(random.Random(f"nano-scene/{split}/{index}"))


def scene_boxes(run: Run, split: str) -> torch.Tensor:
    """(views, 64, 4) `cell_boxes` of every view of ``scenes_{split}.pt``, in the same order.

    A file of its own (``scenes_{split}_boxes.pt``, made on first use from the same seeds) so the
    scene files of runs made before it stay valid.
    """
    path = run.data_dir / f"scenes_{split}_boxes.pt"
    if path.is_file():
        return load_data(path)["box"]
    base, n = scene_seeds(run.plan, split)
    cfg = run.config()
    boxes = [torch.from_numpy(item[3]) for i in range(n)
             for item in anyres_views_with_labels(render_scene(split, base + i), cfg, boxes=True)]
    box = torch.stack(boxes).half()
    save_torch(dict(box=box), path)
    return box


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
    <unk>=0, <s>=1, </s>=2, byte fallback, identity normalisation. The special-token files are
    the bundled tiny tokenizer's, so `SeedXTokenizer.from_pretrained` reads the folder like the
    release's.
    """
    import sentencepiece as spm

    from core_models.tokenizer import (SPECIAL_TOKENS_MAP_FILE, TINY_TOKENIZER_DIR,
                                       TOKENIZER_CONFIG_FILE, SeedXTokenizer)

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
    special = json.loads((TINY_TOKENIZER_DIR / SPECIAL_TOKENS_MAP_FILE).read_text())
    config = json.loads((TINY_TOKENIZER_DIR / TOKENIZER_CONFIG_FILE).read_text())
    tok = SeedXTokenizer(model.getvalue(), added, special, config)
    shutil.rmtree(out_dir, ignore_errors=True)  # a folder left half-written by a crash
    with atomic_write(out_dir, directory=True) as tmp:
        tok.save_pretrained(tmp)


def stage_data(run: Run) -> dict:
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
            scene = render_scene(split, base + i)
            items = anyres_views_with_labels(scene, cfg)
            for j, (u8, colour, shape) in enumerate(items):
                views.append(u8)
                colours.append(torch.from_numpy(colour))
                shapes.append(torch.from_numpy(shape))
                is_global.append(j == len(items) - 1)
        return dict(views=torch.stack(views), colour=torch.stack(colours),
                    shape=torch.stack(shapes), is_global=torch.tensor(is_global))

    seed = plan.seed
    for split in ("train", "eval"):
        path = d / f"scenes_{split}.pt"
        if not path.is_file():
            save_torch(scenes(*scene_seeds(plan, split), split), path)
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
            save_torch(examples(seed0, n, task_names), path)
    sizes = {p.name: p.stat().st_size for p in d.glob("*.pt")}
    lengths = load_data(d / "examples_train.pt")["id_offsets"].diff().float()
    metrics = dict(seconds=round(time.time() - t0, 1), tokenizer_size=len(tok),
                   seq_len_mean=round(lengths.mean().item(), 1), seq_len_max=int(lengths.max()),
                   bytes=sizes)
    say("data", f"done: {metrics}")
    return metrics


