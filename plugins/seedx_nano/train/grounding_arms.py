"""A fixed-budget experiment on grounding: does the LLM learn *where* once it can tell slots apart?

The probes in docs/nano.md ("Grounding") found the object's position only in *which* input-
resampler slot holds it, which attention over content cannot read back. This script continues
the shipped LLM on the grounding tasks ("where", "find_all") for the same budget in two arms:

* ``plain``: the model as it is, plain cross-entropy;
* ``slot``: a learned per-slot vector (zero at the start, so both arms start from the same
  model) added to every view's input-resampler output, so a slot's content says which slot it
  is, the way a pretrained ViT's tokens carry their absolute position;
* ``sincos``: the same vector, but starting as the 2-D sin-cos code of the slot's grid cell
  at the tokens' own norm, so the position is readable from the first step (a zero start has
  to be learned through a model that cannot yet use it).

Each arm is scored every ``--eval-every`` steps with greedy decoding on held-out "Where is …?"
scenes (mean IoU and its standard error). If ``slot`` learns positions and ``plain`` does not,
the lever is an input-side position code; if neither does, the budget or the ViT is the limit.

``--loc-sigma S`` (> 0) trains every arm with Gaussian targets over the location bins instead
of plain cross-entropy (``loc_target.py``); the arm's name gets a ``_sigmaS`` suffix.

``--fresh N`` trains on N grounding examples never used before (made once, with their ViT
features, into the run's ``data/`` and ``features/`` as the split ``groundN``) instead of the
run's 5 k grounding examples, which the continuation sees ~14 times in 3000 steps: the lever
when held-out mIoU is flat while the training loss keeps falling. ``--prepare-only`` makes
the split and stops.

``--share`` sets the fraction of each batch drawn from the grounding tasks (1.0: grounding
only); below 1 the rest comes from every other task with the stage's full loss, so the other
skills are not forgotten while grounding gets a larger share of the steps than in the default
mix. ``--save DIR`` keeps a resumable checkpoint per arm (weights, optimiser, step) at every
evaluation and on SIGTERM, and continues from it when the command is run again.

    python -m seedx_nano.train.grounding_arms --run ~/.cache/seedx-nano/run --steps 1000
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core_models.any_res import image_token_block, process_anyres_image
from core_models.generation import generate
from core_models.mllm import ContinuousLVLM
from core_models.resampler import get_2d_sincos_pos_embed

from .. import metrics, tasks
from .checkpoint import save_torch
from .data import example_record, pack_examples
from .features import encode_vit
from .llm import LLMData, trained_agent
from .loc_target import LocTarget
from .loop import lr_factor, step_generator
from .plan import Plan
from .run import Run, say
from .vit import frozen_vit

GROUNDING_TASKS = ("where", "find_all")
FRESH_SEED_BASE = tasks.TRAIN_SEED_BASE + 7 * 10**8  # beyond every split the run made


def fresh_grounding_split(run: Run, n: int, chunk: int = 2000) -> str:
    """The split name of ``n`` new grounding examples, made (examples, then ViT features) if
    missing; each file is written atomically, so an interrupted run makes it again."""
    split = f"ground{n}"
    data_path = run.data_dir / f"examples_{split}.pt"
    feats_path = run.features_dir / f"examples_{split}.pt"
    if data_path.is_file() and feats_path.is_file():
        return split
    tok, cfg = run.tokenizer(), run.config()
    t0 = time.time()
    records = []
    for ex in itertools.islice(tasks.iter_examples(FRESH_SEED_BASE, list(GROUNDING_TASKS)), n):
        records.append(example_record(ex, tok, cfg))
        if len(records) % chunk == 0:
            say("fresh", f"{len(records)}/{n} examples ({time.time() - t0:.0f}s)")
    packed = pack_examples(records)
    del records
    vit = frozen_vit(run)
    with torch.no_grad():
        feats = dict(views=encode_vit(vit, packed["views"]),
                     answers=encode_vit(vit, packed["answers"]))
    packed["views"] = packed["views"][:0]  # the features replace the pixels
    save_torch(feats, feats_path)
    save_torch(packed, data_path)
    say("fresh", f"{split}: {n} examples, {feats['views'].shape[0]} views ({time.time() - t0:.0f}s)")
    return split


class SlotProbe(nn.Module):
    """A training-only read-out: from the LLM's hidden state at each image slot after
    ``layer`` decoder layers, the slot's own cell of the resampler grid (row, column in [0, 1]).

    Its loss makes the LLM compute *where* a slot is (from RoPE offsets to the block's opening
    tag) into the slot's content, where attention can return it; the release layout keeps no new
    parameter, since the probe is dropped after training.
    """

    def __init__(self, hidden: int, num_queries: int, layer: int = 1):
        super().__init__()
        self.head = nn.Linear(hidden, 2)
        self.grid = int(round(num_queries ** 0.5))
        self.layer = layer
        self.captured: torch.Tensor | None = None

    def attach(self, agent) -> None:
        def keep(module, args, output):
            self.captured = output[0] if isinstance(output, tuple) else output
        agent.llm.get_decoder().layers[self.layer].register_forward_hook(keep)

    def loss(self, ids_cmp_mask: torch.Tensor) -> torch.Tensor:
        h = self.captured[ids_cmp_mask]  # slots in row-major (batch, position) order
        q = self.grid * self.grid
        j = torch.arange(h.shape[0], device=h.device) % q
        target = torch.stack([j // self.grid, j % self.grid], dim=1).to(h.dtype) / (self.grid - 1)
        return torch.nn.functional.mse_loss(self.head(h), target)


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


class MixedSampler:
    """Batches with a fixed share of grounding examples, the rest from every other task."""

    def __init__(self, data: LLMData, share: float):
        tasks_of = data.ex["task"]
        self.grounding = [i for i in data.indices if tasks_of[i] in GROUNDING_TASKS]
        self.other = [i for i in data.indices if tasks_of[i] not in GROUNDING_TASKS]
        self.share = share

    def sample(self, b: int, g: torch.Generator) -> list[int]:
        n_ground = b if self.share >= 1 else int(round(b * self.share))
        pick_g = torch.randint(0, len(self.grounding), (n_ground,), generator=g).tolist()
        pick_o = (torch.randint(0, len(self.other), (b - n_ground,), generator=g).tolist()
                  if b > n_ground else [])
        return [self.grounding[i] for i in pick_g] + [self.other[i] for i in pick_o]


@torch.no_grad()
def init_sincos(code: SlotCode, agent, data: LLMData) -> None:
    """``code`` as the 2-D sin-cos table of the resampler's query grid, each row scaled to the
    mean norm of the resampler's output tokens on a batch of real views."""
    n, dim = code.code.shape
    grid = int(round(n ** 0.5))
    table = get_2d_sincos_pos_embed(dim, grid).float()
    feats = data.batch(list(range(min(16, len(data)))))["image_embeds"]
    norm = agent.input_resampler(feats).norm(dim=-1).mean()
    code.code.copy_(table / table.norm(dim=-1, keepdim=True) * norm)


def save_checkpoint(path: Path, modules: dict[str, nn.Module], opt, step: int, points: list) -> None:
    """Weights, optimiser and step, each file written aside and renamed so a kill loses nothing."""
    path.mkdir(parents=True, exist_ok=True)
    state = {f"{name}.{k}": v.detach().contiguous() for name, m in modules.items()
             for k, v in m.state_dict().items()}
    tmp = path / "weights.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.replace(path / "weights.safetensors")
    torch.save(opt.state_dict(), path / "optim.pt.tmp")
    (path / "optim.pt.tmp").replace(path / "optim.pt")
    (path / "state.json.tmp").write_text(json.dumps(dict(step=step, points=points)))
    (path / "state.json.tmp").replace(path / "state.json")


def load_checkpoint(path: Path, modules: dict[str, nn.Module], opt) -> tuple[int, list]:
    if not (path / "state.json").exists():
        return 0, []
    state = load_file(str(path / "weights.safetensors"))
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    opt.load_state_dict(torch.load(path / "optim.pt", weights_only=True))
    meta = json.loads((path / "state.json").read_text())
    return int(meta["step"]), list(meta["points"])


def run_arm(run: Run, arm: str, steps: int, batch: int, lr: float, eval_every: int, n_eval: int,
            log: Path, share: float = 1.0, save: Path | None = None,
            loc_sigma: float = 0.0, split: str = "train", aux_weight: float = 1.0) -> list[dict]:
    torch.manual_seed(0)
    agent = trained_agent(run)
    vit = frozen_vit(run)
    modules: dict[str, nn.Module] = dict(agent=agent)
    if arm in ("slot", "sincos"):
        code = SlotCode(agent.input_resampler.num_queries, agent.input_resampler.embed_dim)
        if arm == "sincos":
            init_sincos(code, agent, LLMData(run, split))
        agent.input_resampler.register_forward_hook(code.hook)
        modules["slot"] = code
    probe = None
    if arm.startswith("aux"):  # aux, or aux<L>: the probe after decoder layer L (default 1)
        probe = SlotProbe(agent.llm.config.hidden_size, agent.input_resampler.num_queries,
                          int(arm[3:] or 1))
        probe.attach(agent)
        modules["probe"] = probe
    params = [p for m in modules.values() for p in m.parameters()]
    data = LLMData(run, split)
    sampler = MixedSampler(data, share)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    name = arm if share >= 1 else f"{arm}_share{share:g}"
    name += f"_sigma{loc_sigma:g}" if loc_sigma > 0 else ""
    name += f"_{split}" if split != "train" else ""
    target = LocTarget(run.tokenizer().loc_token_ids, loc_sigma) if loc_sigma > 0 else None
    ckpt = save / name if save else None
    start, points = load_checkpoint(ckpt, modules, opt) if ckpt else (0, [])
    if start:
        say(name, f"resuming at step {start}/{steps}")
    else:
        points = [dict(arm=name, step=0, **where_miou(run, agent, vit, n_eval))]
        say(name, json.dumps(points[-1]))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    agent.train()
    t0 = time.time()
    for step in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, steps, 50)
        g = step_generator(1, f"grounding_{arm}", step)
        inputs = data.batch(sampler.sample(batch, g))
        out = agent(**inputs)
        lm = target.lm_loss(out["logits"], inputs["labels"]) if target else out["lm_loss"]
        loss = lm if share >= 1 else agent.lm_loss_scale * lm + agent.rec_loss_scale * out["rec_loss"]
        aux = probe.loss(inputs["ids_cmp_mask"]) if probe is not None else None
        if aux is not None:
            loss = loss + aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done = step + 1
        if done % 25 == 0:
            say(name, f"step {done}/{steps} lm {out['lm_loss'].item():.4f} "
                      f"rec {out['rec_loss'].item():.4f} "
                      + (f"aux {aux.item():.4f} " if aux is not None else "") + f"{(done - start) / (time.time() - t0):.2f} it/s")
        if done % eval_every == 0 or done == steps:
            points.append(dict(arm=name, step=done, **where_miou(run, agent, vit, n_eval)))
            say(name, json.dumps(points[-1]))
            with log.open("a") as f:
                f.write(json.dumps(points[-1]) + "\n")
        if ckpt and (stop or done % eval_every == 0 or done == steps):
            save_checkpoint(ckpt, modules, opt, done, points)
        if stop:
            say(name, f"stopped by SIGTERM at step {done}; run the same command to continue")
            raise SystemExit(0)
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
    p.add_argument("--share", type=float, default=1.0,
                   help="fraction of each batch from the grounding tasks (1: grounding only)")
    p.add_argument("--save", type=Path, default=None, help="resumable checkpoints, one per arm")
    p.add_argument("--loc-sigma", type=float, default=0.0,
                   help="Gaussian targets over location bins, this many bins wide (0: plain CE)")
    p.add_argument("--fresh", type=int, default=0,
                   help="train on this many never-seen grounding examples (0: the run's own)")
    p.add_argument("--aux-weight", type=float, default=1.0,
                   help="weight of the slot-position probe's loss in the aux arms")
    p.add_argument("--prepare-only", action="store_true", help="make the --fresh split and stop")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    plan = Plan(**json.loads((a.run / "plan.json").read_text()))
    run = Run(a.run, plan)
    log = a.log or a.run / "grounding_arms.jsonl"
    split = fresh_grounding_split(run, a.fresh) if a.fresh else "train"
    if a.prepare_only:
        return 0
    for arm in a.arms.split(","):
        run_arm(run, arm, a.steps, a.batch, a.lr, a.eval_every, a.n_eval, log, a.share, a.save, a.loc_sigma, split,
                a.aux_weight)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
