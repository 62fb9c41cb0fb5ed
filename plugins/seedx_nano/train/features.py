"""Stage ``features``: the frozen ViT and VAE run once over everything that follows.

The LLM and the de-tokenizers never run the encoders while they train; they read these caches:
ViT features of every view and answer picture (``examples_*.pt``), ``vit_down`` features and VAE
latents of the de-tokenizer pictures (``detok1_*.pt``) and of the edit / try-on pairs
(``detok2_*.pt``), and ViT(grey), the classifier-free-guidance negative.
"""

from __future__ import annotations

import time

import torch

from core_models.detokenizer import vit_down
from core_models.qwen_vit import negative_pixel_values

from .checkpoint import load_data, save_torch
from .pixels import clip_normalise, vae_normalise
from .run import Run, say
from .vae import frozen_vae
from .vit import frozen_vit


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
    vit, vae = frozen_vit(run), frozen_vae(run)
    t0 = time.time()
    d, fdir = run.data_dir, run.features_dir
    fdir.mkdir(parents=True, exist_ok=True)
    negative = vit_down(vit(negative_pixel_values(run.config().base_resolution))).float()
    for split in ("train", "eval"):
        ex = load_data(d / f"examples_{split}.pt")
        save_torch(dict(views=encode_vit(vit, ex["views"]), answers=encode_vit(vit, ex["answers"])),
                   fdir / f"examples_{split}.pt")
        scenes = load_data(d / f"scenes_{split}.pt")
        glob = scenes["views"][scenes["is_global"]]
        # De-tokenizer stage 1: global views of scenes + every answer picture (drawings, pages,
        # edited scenes, dressed people), all 64x64.
        pics = torch.cat([glob, ex["answers"]])
        save_torch(dict(images=pics, feats=vit_down(encode_vit(vit, pics).float()).half(),
                        latents=encode_vae(vae, pics), negative=negative),
                   fdir / f"detok1_{split}.pt")
        pairs = load_data(d / f"pairs_{split}.pt")
        keep = (pairs["answer_index"] >= 0) & (pairs["condition_index"] >= 0)
        tgt = pairs["answers"][pairs["answer_index"][keep]]
        src = pairs["conditions"][pairs["condition_index"][keep]]
        # also the edit/try-on examples of the LLM set
        keep2 = (ex["answer_index"] >= 0) & (ex["condition_index"] >= 0)
        tgt = torch.cat([tgt, ex["answers"][ex["answer_index"][keep2]]])
        src = torch.cat([src, ex["conditions"][ex["condition_index"][keep2]]])
        save_torch(dict(targets=tgt, sources=src,
                        feats=vit_down(encode_vit(vit, tgt).float()).half(),
                        target_latents=encode_vae(vae, tgt), source_latents=encode_vae(vae, src),
                        negative=negative), fdir / f"detok2_{split}.pt")
    metrics = dict(seconds=round(time.time() - t0, 1))
    say("features", f"done: {metrics}")
    return metrics

