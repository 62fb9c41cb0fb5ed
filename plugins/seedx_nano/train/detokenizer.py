"""Stages ``detok1`` and ``detok2``: the de-tokenizer, from ViT features to pictures.

Stage 1 trains `ResamplerXLV2` (features -> ``prompt_embeds`` + pooled) into the UNet's
cross-attention and ``text_time`` embedding with SDXL's eps-prediction at uniform DDPM timesteps;
10 % of conditions are replaced by ViT(grey) features so classifier-free guidance works. The whole
UNet trains (upstream stage 1 only tuned ``to_k``/``to_v`` of a pre-trained SDXL; ours starts from
scratch). Stage 2 is `SDXLAdapterWithLatentImage` initialised from stage 1 with ``conv_in``
widened to 8 channels (zeros on the new ones) and conditioned on the source picture's latent, on
edits, improvements and try-on. Each stage is evaluated by sampling held-out pictures from
ground-truth features and reading them back with the model-free analyser.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler
from PIL import Image
from torch import nn

from core_models.config import SeedXConfig
from core_models.detokenizer import SDXLAdapter, SDXLAdapterWithLatentImage, vit_down
from core_models.detokenizer_resampler import ResamplerXLV2
from core_models.stack import build_unet, load_scheduler

from .. import tasks
from ..analyser import analyse
from .checkpoint import CheckpointError, load_data, load_stage_modules
from .loop import finish_stage, train_loop
from .pixels import clip_normalise, grid, psnr, to_uint8, vae_normalise
from .run import Run
from .vae import frozen_vae
from .vit import frozen_vit


def build_adapter(cfg: SeedXConfig, seed: int, stage: int) -> nn.Module:
    torch.manual_seed(seed + 1 + stage)
    unet, resampler = build_unet(cfg.unet), ResamplerXLV2(**cfg.detokenizer_resampler)
    # From scratch, so the whole UNet trains (upstream stage 1 only tuned to_k/to_v of SDXL).
    if stage == 1:
        return SDXLAdapter(unet, resampler, full_ft=True)
    return SDXLAdapterWithLatentImage(unet, resampler, full_ft=True)


def _alphas_cumprod(cfg: SeedXConfig) -> torch.Tensor:
    return EulerDiscreteScheduler.from_config(dict(cfg.scheduler)).alphas_cumprod.float()


def _time_ids(cfg: SeedXConfig, b: int) -> torch.Tensor:
    r = cfg.image_size
    return torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32).repeat(b, 1)


def detok_loss(adapter, cfg, ac, x0, feats, negative, g, p_uncond, source=None,
               identity: float = 0.0) -> dict:
    """The de-tokenizer's diffusion loss at a uniform timestep, SDXL-style conditioning, CFG
    dropout; the UNet predicts what ``cfg.scheduler["prediction_type"]`` says (eps or v).

    ``source`` (stage 2): the condition latents (``latent_dist.mode()``, unscaled, the IP2P
    convention ``encode_source_image`` uses), dropped to zeros independently of the features.
    ``identity``: that share of the batch becomes "the CFG negative and the source -> the
    source" pairs, which is what the image-only guidance branch should give and which teaches
    the copy that edits stand on.
    """
    b = x0.shape[0]
    n_id = int(round(identity * b)) if source is not None else 0
    if n_id:
        sf = float(cfg.vae["scaling_factor"])
        x0, feats = x0.clone(), feats.clone()
        x0[:n_id] = source[:n_id] * sf
        feats[:n_id] = negative
    drop = torch.rand(b, generator=g) < p_uncond
    feats = torch.where(drop[:, None, None], negative.expand(b, -1, -1), feats)
    t = torch.randint(0, ac.numel(), (b,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = ac[t].view(b, 1, 1, 1)
    sample = a.sqrt() * x0 + (1 - a).sqrt() * noise
    if source is not None:
        drop_src = torch.rand(b, generator=g) < p_uncond
        drop_src[:n_id] = False
        source = torch.where(drop_src[:, None, None, None], torch.zeros_like(source), source)
        sample = torch.cat([sample, source], dim=1)
    prompt_embeds, pooled = adapter.resampler(feats)
    out = adapter.unet(sample, t, encoder_hidden_states=prompt_embeds,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": _time_ids(cfg, b)}).sample
    kind = cfg.scheduler.get("prediction_type", "epsilon")
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
    else:
        raise ValueError(f"prediction_type {kind!r}: the Nano trains 'epsilon' or 'v_prediction'")
    return dict(loss=F.mse_loss(out, target))


def _definition(run: Run, stage: int) -> dict:
    """What a de-tokenizer checkpoint must have been trained under to be resumed."""
    plan = run.plan
    out = {"prediction_type": plan.detok_prediction}
    if stage == 2:
        out.update(identity=float(plan.detok2_identity), conv_in_lr=float(plan.detok2_conv_in_lr))
    return out


# De-tokenizer checkpoints of versions that recorded no definition (SDXL's eps, no identity pairs).
EARLIER_DETOK_DEFINITION = {1: {"prediction_type": "epsilon"},
                            2: {"prediction_type": "epsilon", "identity": 0.0, "conv_in_lr": 1.0}}


def _attach_pipe(run: Run, adapter) -> None:
    cfg = run.config()
    adapter.init_pipe(vae=frozen_vae(run), scheduler=load_scheduler(scheduler=cfg.scheduler),
                      vit=frozen_vit(run))


def _objects_match(image: Image.Image, objects) -> tuple[float, float]:
    """(fraction of ground-truth objects found with the right colour and shape, count right)."""
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
    plan, cfg = run.plan, run.config()
    _attach_pipe(run, adapter)
    adapter.eval()
    vit = adapter.vit

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
    grid([ex.answer_image.resize((64, 64)) for ex in exs[:8]] + images[:8]).save(sample_dir / "draw.png")
    return dict(draw_attr_acc_from_vit_features=round(float(np.mean(attr)), 4),
                draw_count_acc=round(float(np.mean(cnt)), 4),
                vae_ceiling_attr_acc=round(float(np.mean(attr_vae)), 4), n=len(exs))


def stage_detok1(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    adapter = build_adapter(cfg, plan.seed, 1)
    data = load_data(run.features_dir / "detok1_train.pt")
    sf = float(cfg.vae["scaling_factor"])
    latents, feats, negative = data["latents"] * sf, data["feats"], data["negative"]
    ac = _alphas_cumprod(cfg)
    b, n = plan.batch["detok1"], latents.shape[0]

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n, (b,), generator=g)
        return detok_loss(adapter, cfg, ac, latents[idx], feats[idx].float(), negative, g, plan.p_uncond)

    params = [p for p in adapter.parameters() if p.requires_grad]
    result = train_loop(run, "detok1", dict(adapter=adapter), params, step_fn, items_per_step=b,
                        definition=_definition(run, 1), earlier_definition=EARLIER_DETOK_DEFINITION[1])
    return finish_stage(run, "detok1", result, adapter, "adapter.fp16.safetensors",
                        lambda: detok1_eval(run, adapter))


@torch.no_grad()
def detok2_eval(run: Run, adapter) -> dict:
    """Held-out edits / try-on from ground-truth target features + source latent: PSNR to the
    target at 64 px, and the analyser's object match on scene edits."""
    plan, cfg = run.plan, run.config()
    _attach_pipe(run, adapter)
    adapter.eval()
    data = load_data(run.features_dir / "detok2_eval.pt")
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
    grid(sources[:8] + [Image.fromarray(data["targets"][i].permute(1, 2, 0).numpy()) for i in range(min(8, n))]
          + images[:8]).save(sample_dir / "edits.png")
    return dict(psnr_to_target=round(psnr(out, target).mean().item(), 2),
                psnr_source_to_target=round(psnr(source, target).mean().item(), 2), n=n)


def stage_detok2(run: Run) -> dict:
    plan, cfg = run.plan, run.config()
    adapter = build_adapter(cfg, plan.seed, 2)
    made_with = (run.done("detok1") or {}).get("definition") or EARLIER_DETOK_DEFINITION[1]
    if made_with.get("prediction_type", "epsilon") != plan.detok_prediction:
        raise CheckpointError(f"stage detok1 was trained to predict {made_with['prediction_type']!r} "
                              f"and stage 2 would predict {plan.detok_prediction!r}; they share one "
                              "scheduler: train detok1 again (delete its folder) or give "
                              f"--detok-prediction {made_with['prediction_type']}")
    # Initialise from stage 1: every weight, conv_in widened with zeros on the 4 new channels.
    stage1 = load_stage_modules(run, "detok1")["adapter"]
    w = stage1["unet.conv_in.weight"]
    widened = torch.zeros(w.shape[0], 8, *w.shape[2:])
    widened[:, :4] = w
    adapter.load_state_dict({**stage1, "unet.conv_in.weight": widened})
    data = load_data(run.features_dir / "detok2_train.pt")
    sf = float(cfg.vae["scaling_factor"])
    targets, sources = data["target_latents"] * sf, data["source_latents"]
    feats, negative = data["feats"], data["negative"]
    ac = _alphas_cumprod(cfg)
    b, n = plan.batch["detok2"], targets.shape[0]

    def step_fn(step: int, g: torch.Generator) -> dict:
        idx = torch.randint(0, n, (b,), generator=g)
        return detok_loss(adapter, cfg, ac, targets[idx], feats[idx].float(), negative, g,
                          plan.p_uncond, source=sources[idx], identity=plan.detok2_identity)

    # conv_in's source channels start at zero: a larger step there lets the copy start sooner
    conv_in = [p for n, p in adapter.named_parameters() if n.startswith("unet.conv_in") and p.requires_grad]
    rest = [p for n, p in adapter.named_parameters() if not n.startswith("unet.conv_in") and p.requires_grad]
    groups = [dict(params=rest), dict(params=conv_in, lr_mult=plan.detok2_conv_in_lr)]
    result = train_loop(run, "detok2", dict(adapter=adapter), groups, step_fn, items_per_step=b,
                        definition=_definition(run, 2), earlier_definition=EARLIER_DETOK_DEFINITION[2])
    return finish_stage(run, "detok2", result, adapter, "adapter.fp16.safetensors",
                        lambda: detok2_eval(run, adapter))

