"""Stage ``vae``: the f=4 `AutoencoderKL` (64x64x3 <-> 16x16x4), trained from scratch.

MSE + 0.1 L1 + 1e-4 KL on every kind of picture the world makes. At the end the latent
``scaling_factor`` (1 / std of held-out latents) is measured and recorded in ``done.json``, from
where `Run.config` and the export put it into ``seedx_config.json``, as SDXL's VAE config does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from core_models.config import SeedXConfig

from .checkpoint import load_data, load_stage_modules, save_fp16
from .loop import train_loop
from .pixels import psnr, vae_normalise
from .run import Run, say


def build_vae(cfg: SeedXConfig, seed: int) -> nn.Module:
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
    train = load_data(run.data_dir / "scenes_train.pt")["views"]
    examples = load_data(run.data_dir / "examples_train.pt")
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
    evald = load_data(run.data_dir / "scenes_eval.pt")["views"]
    examples_eval = load_data(run.data_dir / "examples_eval.pt")
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

