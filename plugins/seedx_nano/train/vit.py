"""Stage ``vit``: the visual tokenizer, trained first and frozen for everything after it.

`VisionTransformerWithAttnPool` at the Nano's size learns from dense linear read-outs
(`ViTHeads`): the colour and shape of the object covering each 8x8-pixel cell, and the cell's
pixels, both on the 64 raw tokens and on the 16 ``vit_down`` tokens the LLM regresses (so those
16 tokens linearly encode what is where). With ``Plan.vit_box_weight`` > 0 they also read out the
box of the object covering each cell (`data.cell_boxes`): a token then says *where* its object is
in its content, which attention can return, instead of only through its slot (docs/nano.md,
"Grounding"). A quarter of each batch are task pictures (people,
swatches, pages) with pixel targets only.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from core_models.config import SeedXConfig
from core_models.detokenizer import vit_down
from core_models.qwen_vit import VisionTransformerWithAttnPool

from .checkpoint import load_data, load_stage_modules, save_fp16
from .data import scene_boxes
from .loop import train_loop
from .pixels import clip_normalise
from .run import Run, say

IGNORE = -100  # cells without a label (task pictures) and, in the LLM stage, unscored tokens


class ViTHeads(nn.Module):
    """Linear read-outs that make the ViT's tokens encode what and where.

    On the 64 raw tokens (one per 8x8-pixel cell of a 64 px view) and on the 16 ``vit_down``
    tokens (1x4 strips of cells: what the LLM regresses and the de-tokenizer reads): the colour
    (7-way) and shape (4-way) of the object covering each cell, the cell's pixels at 4x4, and
    that object's box in the view (x0, y0, x1, y1 in [0, 1]; used when its weight is > 0).
    """

    PIX = 4 * 4 * 3

    def __init__(self, dim: int, boxes: bool = False):
        super().__init__()
        self.colour = nn.Linear(dim, 7)
        self.shape = nn.Linear(dim, 4)
        self.pixels = nn.Linear(dim, self.PIX)
        self.down_colour = nn.Linear(dim, 4 * 7)
        self.down_shape = nn.Linear(dim, 4 * 4)
        self.down_pixels = nn.Linear(dim, 4 * self.PIX)
        if boxes:  # only then, so checkpoints of runs without them load as they are
            self.box = nn.Linear(dim, 4)
            self.down_box = nn.Linear(dim, 4 * 4)


def cell_pixels(u8: torch.Tensor) -> torch.Tensor:
    """(N,3,64,64) uint8 -> (N, 64 cells, 48): each 8x8 cell averaged to 4x4 RGB in [0,1]."""
    x = F.avg_pool2d(u8.float() / 255, 2)  # (N,3,32,32)
    n = x.shape[0]
    x = x.view(n, 3, 8, 4, 8, 4).permute(0, 2, 4, 3, 5, 1)  # (N, gy, gx, 4, 4, 3)
    return x.reshape(n, 64, ViTHeads.PIX)


def _box_loss(pred: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """MSE over the cells an object covers (box >= 0), x10 like the pixel loss."""
    known = box[..., 0] >= 0
    if not known.any():
        return pred.sum() * 0
    return F.mse_loss(pred[known], box[known].to(pred.dtype)) * 10


def vit_losses(vit: nn.Module, heads: ViTHeads, u8: torch.Tensor, colour: torch.Tensor,
               shape: torch.Tensor, box: torch.Tensor | None = None,
               box_weight: float = 0.0) -> dict[str, torch.Tensor]:
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
    if box is not None and box_weight > 0:
        out["box"] = box_weight * _box_loss(heads.box(tokens), box)
        out["down_box"] = box_weight * _box_loss(heads.down_box(down).view(n, 64, 4), box)
    out["_tokens"] = tokens
    return out


@torch.no_grad()
def vit_probe(vit, heads, data: dict, batch: int = 128, box: torch.Tensor | None = None) -> dict:
    """Held-out accuracies of the linear read-outs, per cell (object cells only for shape);
    with ``box``, the mean absolute error of the box read-outs in location bins (of 224)."""
    vit.eval()
    hits = defaultdict(float)
    n_cells = n_obj = n_box = 0
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
        if box is not None:
            b = box[i:i + batch].float()
            known = b[..., 0] >= 0
            for name, pred in (("cell", heads.box(tokens)), ("down", heads.down_box(down).view(n, 64, 4))):
                hits[f"{name}_box_bins"] += ((pred - b).abs()[known].sum() * 224 / 4).item()
            n_box += known.sum().item()
        n_cells += colour.numel()
        n_obj += obj.sum().item()
    def per(k):
        return n_cells if k.endswith("_acc") else max(1, n_box if k.endswith("_bins") else n_obj)
    return {k: round(v / per(k), 4) for k, v in hits.items()}


def build_vit(cfg: SeedXConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    vit = VisionTransformerWithAttnPool(**cfg.vit)
    vit.transformer.gradient_checkpointing = False  # recomputation only costs time on a CPU
    return vit


def stage_vit(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    train = load_data(run.data_dir / "scenes_train.pt")
    examples = load_data(run.data_dir / "examples_train.pt")
    # Views of the task pictures (people, swatches, pages, drawings): pixel targets only.
    extra = torch.cat([examples["views"], examples["answers"]])
    n_scene, n_extra = train["views"].shape[0], extra.shape[0]
    vit = build_vit(cfg, plan.seed)
    torch.manual_seed(plan.seed + 100)
    w_box = plan.vit_box_weight
    heads = ViTHeads(cfg.vit["output_dim"], boxes=w_box > 0)
    b = plan.batch["vit"]
    n_from_extra = b // 4 if n_extra else 0
    boxes = scene_boxes(run, "train") if w_box > 0 else None

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n_scene, (b - n_from_extra,), generator=g)
        u8, colour, shape = train["views"][idx], train["colour"][idx], train["shape"][idx]
        box = boxes[idx] if boxes is not None else None
        if n_from_extra:
            jdx = torch.randint(0, n_extra, (n_from_extra,), generator=g)
            u8 = torch.cat([u8, extra[jdx]])
            unknown = torch.full((n_from_extra, 64), IGNORE, dtype=torch.int8)
            colour, shape = torch.cat([colour, unknown]), torch.cat([shape, unknown])
            if box is not None:
                box = torch.cat([box, torch.full((n_from_extra, 64, 4), -1.0, dtype=box.dtype)])
        losses = vit_losses(vit, heads, u8, colour, shape, box, w_box)
        losses.pop("_tokens")
        total = sum(losses.values())
        return dict(loss=total, **{k: v.item() for k, v in losses.items()})

    params = list(vit.parameters()) + list(heads.parameters())
    result = train_loop(run, "vit", dict(vit=vit, heads=heads), params, step_fn, items_per_step=b,
                        definition=dict(box_weight=float(w_box)),
                        earlier_definition=dict(box_weight=0.0))
    evald = load_data(run.data_dir / "scenes_eval.pt")
    eval_boxes = scene_boxes(run, "eval") if w_box > 0 else None
    result["probe_heldout"] = vit_probe(vit, heads, evald, box=eval_boxes)
    save_fp16(vit.state_dict(), run.stage_dir("vit") / "vit.fp16.safetensors")
    say("vit", f"held-out probe: {result['probe_heldout']}")
    return result


def frozen_vit(run: Run) -> nn.Module:
    vit = build_vit(run.config(), run.plan.seed)
    vit.load_state_dict(load_stage_modules(run, "vit")["vit"])
    return vit.eval().requires_grad_(False)

