"""A fixed-budget experiment on grounding: does the LLM learn *where* once it can tell slots apart?

The probes in docs/nano.md ("Grounding") found the object's position only in *which* input-
resampler slot holds it, which attention over content cannot read back. This script continues
the shipped LLM on the grounding tasks ("where", "find_all") for the same budget in two arms:

* ``plain``: the model as it is, plain cross-entropy;
* ``slot``: a learned per-slot vector (zero at the start, so both arms start from the same
  model) added to every view's input-resampler output, so a slot's content says which slot it
  is, the way a pretrained ViT's tokens carry their absolute position.

Each arm is scored every ``--eval-every`` steps with greedy decoding on held-out "Where is …?"
scenes (mean IoU and its standard error). If ``slot`` learns positions and ``plain`` does not,
the lever is an input-side position code; if neither does, the budget or the ViT is the limit.

    python -m seedx_nano.train.grounding_arms --run ~/.cache/seedx-nano/run --steps 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core_models.any_res import image_token_block, process_anyres_image
from core_models.generation import generate
from core_models.mllm import ContinuousLVLM

from .. import metrics, tasks
from .llm import LLMData, trained_agent
from .loop import lr_factor, step_generator
from .plan import Plan
from .run import Run, say
from .vit import frozen_vit

GROUNDING_TASKS = ("where", "find_all")


class SlotCode(nn.Module):
    """One learned vector per resampler slot, added to each view's resampled tokens."""

    def __init__(self, num_queries: int, hidden: int):
        super().__init__()
        self.code = nn.Parameter(torch.zeros(num_queries, hidden))

    def hook(self, module, args, output):
        return output + self.code.to(output.dtype)


@torch.no_grad()
def where_miou(run: Run, agent, vit, n: int) -> dict:
    cfg, tok = run.config(), run.tokenizer()
    agent.eval()
    ious = []
    sample = ""
    for ex in itertools.islice(tasks.iter_examples(tasks.EVAL_SEED_BASE + 9 * 10**8, ["where"]), n):
        ar = process_anyres_image(ex.images[0], cfg.resolution_grids, cfg.base_resolution)
        prompt = f"[INST] {image_token_block(ar.num_views, cfg.num_img_tokens)}{ex.instruction} [/INST]\n"
        ids = torch.tensor([[tok.bos_token_id] + tok.encode(prompt)])
        feats = vit(ar.pixel_values)
        mask = ContinuousLVLM.build_ids_cmp_mask(ids, tok.boi_token_id, tok.eoi_token_id,
                                                 tok.bop_token_id, tok.eop_token_id)
        result = generate(agent, tok, ids, image_embeds=feats,
                          embeds_cmp_mask=torch.ones(feats.shape[0], dtype=torch.bool),
                          ids_cmp_mask=mask, patch_positions=ar.patch_positions,
                          max_new_tokens=24, num_img_gen_tokens=cfg.num_img_tokens)
        scene = ex.meta["scene"]
        ious.append(metrics.grounding_iou(tasks.parse_boxes(result.text, scene.width, scene.height),
                                          ex.meta["boxes"]))
        sample = sample or f"{ex.instruction} -> {result.text!r}"
    agent.train()
    v = np.array(ious)
    return dict(miou=round(float(v.mean()), 4), se=round(float(v.std(ddof=1) / np.sqrt(len(v))), 4),
                sample=sample)


def run_arm(run: Run, arm: str, steps: int, batch: int, lr: float, eval_every: int, n_eval: int,
            log: Path) -> list[dict]:
    torch.manual_seed(0)
    agent = trained_agent(run)
    vit = frozen_vit(run)
    params = list(agent.parameters())
    if arm == "slot":
        code = SlotCode(agent.input_resampler.num_queries, agent.input_resampler.embed_dim)
        agent.input_resampler.register_forward_hook(code.hook)
        params += list(code.parameters())
    data = LLMData(run, "train")
    data.indices = [i for i in data.indices if data.ex["task"][i] in GROUNDING_TASKS]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    points = [dict(arm=arm, step=0, **where_miou(run, agent, vit, n_eval))]
    say(arm, json.dumps(points[-1]))
    agent.train()
    t0 = time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, 50)
        g = step_generator(1, f"grounding_{arm}", step)
        out = agent(**data.batch(data.sample(batch, g)))
        opt.zero_grad(set_to_none=True)
        out["lm_loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % 25 == 0:
            say(arm, f"step {step + 1}/{steps} lm {out['lm_loss'].item():.4f} "
                     f"{(step + 1) / (time.time() - t0):.2f} it/s")
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            points.append(dict(arm=arm, step=step + 1, **where_miou(run, agent, vit, n_eval)))
            say(arm, json.dumps(points[-1]))
            with log.open("a") as f:
                f.write(json.dumps(points[-1]) + "\n")
    return points


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--arms", default="slot,plain")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--n-eval", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log", type=Path, default=None, help="JSON lines of the scores")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    plan = Plan(**json.loads((a.run / "plan.json").read_text()))
    run = Run(a.run, plan)
    log = a.log or a.run / "grounding_arms.jsonl"
    for arm in a.arms.split(","):
        run_arm(run, arm, a.steps, a.batch, a.lr, a.eval_every, a.n_eval, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
