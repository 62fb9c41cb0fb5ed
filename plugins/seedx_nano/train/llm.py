"""Stage ``llm``: `ContinuousLVLM` pre-training on every task of the world.

SEED-X-I's template ``[INST] {image blocks}{instruction} [/INST]\\n``, images through the real
any-res tiling + input resampler + patch positions (from the cached ViT features), answers with
inline ``<box_start><loc-…>x4<box_end>`` and generated images as ``<img>`` + 16 placeholders +
``</img>``. The loss is ``ContinuousLVLM.forward``'s own: next-token CE + 6 x MSE of the output
resampler against the ViT features of the answer picture. `LLMData` is shared with the LoRA
stage, which trains adapters on the same batches restricted to one variant's tasks.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import torch
from torch import nn

from core_models.any_res import image_token_block, process_anyres_image
from core_models.config import SeedXConfig
from core_models.generation import generate
from core_models.mllm import ContinuousLVLM

from .. import metrics, tasks
from .checkpoint import load_data, load_stage_modules
from .loc_target import LocTarget, ordered_loc_embeddings
from .loop import finish_stage, train_loop
from .run import Run, say
from .vit import IGNORE, frozen_vit


def build_agent(cfg: SeedXConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed + 1)
    return ContinuousLVLM.from_config(cfg)


class LLMData:
    """Cached examples -> padded batches with every mask ``ContinuousLVLM.forward`` needs."""

    def __init__(self, run: Run, split: str, variant: str | None = None):
        self.ex = load_data(run.data_dir / f"examples_{split}.pt")
        self.feats = load_data(run.features_dir / f"examples_{split}.pt")
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


# What LLM checkpoints of versions that recorded no definition were trained with.
EARLIER_LLM_DEFINITION = {"loc_sigma": 0.0, "loc_ordered_init": False}


def stage_llm(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    agent = build_agent(cfg, plan.seed)
    loc_ids = run.tokenizer().loc_token_ids
    if plan.loc_ordered_init:
        ordered_loc_embeddings(agent, loc_ids)
    target = LocTarget(loc_ids, plan.loc_sigma) if plan.loc_sigma > 0 else None
    data = LLMData(run, "train")
    b = plan.batch["llm"]

    def step_fn(step: int, g: torch.Generator) -> dict:
        inputs = data.batch(data.sample(b, g))
        out = agent(**inputs)
        loss = out["total_loss"]
        if target is not None:
            lm = target.lm_loss(out["logits"], inputs["labels"])
            loss = agent.lm_loss_scale * lm + agent.rec_loss_scale * out["rec_loss"]
        return dict(loss=loss, lm=out["lm_loss"].item(), rec=out["rec_loss"].item())

    definition = {"loc_sigma": float(plan.loc_sigma), "loc_ordered_init": bool(plan.loc_ordered_init)}
    result = train_loop(run, "llm", dict(agent=agent), list(agent.parameters()), step_fn,
                        items_per_step=b, definition=definition,
                        earlier_definition=EARLIER_LLM_DEFINITION)
    result["heldout"] = llm_eval(agent, LLMData(run, "eval"))
    say("llm", f"held-out: {result['heldout']}")
    return finish_stage(run, "llm", result, agent, "agent.fp16.safetensors",
                        lambda: llm_generation_eval(run, agent, n=8 if plan.smoke else 48),
                        key="generation")


def trained_agent(run: Run) -> nn.Module:
    agent = build_agent(run.config(), run.plan.seed)
    agent.load_state_dict(load_stage_modules(run, "llm")["agent"])
    return agent

