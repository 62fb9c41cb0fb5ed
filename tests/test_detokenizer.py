"""The SDXL de-tokenizer: golden conditioning, equality with diffusers' pipelines, key manifests.

* ``adapter_sdxl_conditioning`` fixture: what the adapters hand to the UNet at step 0 (the UNet and
  VAE are throw-away tiny random models, so only the conditioning is compared).
* Our Euler loops against ``StableDiffusionXLPipeline`` (stage 1) and
  ``StableDiffusionXLInstructPix2PixPipeline`` (stage 2) on one tiny random UNet/VAE.
* The full-size module trees (built on ``meta``) against the checkpoint manifests.
"""

import json
import threading

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from PIL import Image
from safetensors.torch import load_file

from conftest import GOLDEN
from core_models.config import SeedXConfig
from core_models.detokenizer import (DenoisingCancelled, ImageEmbeds, SDXLAdapter,
                                     SDXLAdapterWithLatentImage, apply_detokenizer_weights,
                                     expected_shapes, expected_stage1_keys, expected_stage2_keys,
                                     vit_down)
from core_models.detokenizer_resampler import ResamplerXLV2
from core_models.qwen_vit import VisionTransformerWithAttnPool
from helpers import synthetic_image

TOL = dict(atol=1e-4, rtol=1e-4)
# ImageEmbeds field -> fixture suffix
FIXTURE_NAMES = dict(prompt_embeds="prompt_embeds", negative_prompt_embeds="negative_prompt_embeds",
                     pooled_prompt_embeds="pooled", negative_pooled_prompt_embeds="negative_pooled")
CONFIG = json.loads((GOLDEN / "resampler" / "config.json").read_text())
CAPTURE = CONFIG["adapter_sdxl_conditioning"]


# --- building blocks ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    args = json.loads((GOLDEN / "vit" / "config.json").read_text())["constructor_args"]
    model = VisionTransformerWithAttnPool(**args).eval()
    model.load_state_dict(load_file(GOLDEN / "vit" / "weights.safetensors"), strict=True)
    return model


def make_resampler():
    model = ResamplerXLV2(**CONFIG["detokenizer_resampler"]["constructor_args"]).eval()
    model.load_state_dict(load_file(GOLDEN / "resampler" / "detok_resampler_weights.safetensors"),
                          strict=True)
    return model


def make_unet(in_channels=4, seed=0):
    torch.manual_seed(seed)
    return UNet2DConditionModel(**{**CAPTURE["tiny_unet_config_used_for_capture"],
                                   "in_channels": in_channels}).eval()


def make_vae(seed=1):
    torch.manual_seed(seed)
    return AutoencoderKL(**CAPTURE["tiny_vae_config_used_for_capture"]).eval()


def make_scheduler():
    return EulerDiscreteScheduler(**CAPTURE["scheduler_config"])


def capture_unet_calls(unet):
    """Wrap ``unet.forward`` and record the conditioning of every call."""
    calls = []
    forward = unet.forward

    def wrapped(sample, timestep, encoder_hidden_states, added_cond_kwargs=None, **kwargs):
        calls.append(dict(sample=sample.clone(), timestep=torch.as_tensor(timestep).clone(),
                          encoder_hidden_states=encoder_hidden_states.clone(),
                          text_embeds=added_cond_kwargs["text_embeds"].clone(),
                          time_ids=added_cond_kwargs["time_ids"].clone()))
        return forward(sample, timestep, encoder_hidden_states,
                       added_cond_kwargs=added_cond_kwargs, **kwargs)

    unet.forward = wrapped
    return calls


def random_embeds(n=1, seed=5, tokens=64, width=64, pooled=40):
    g = torch.Generator().manual_seed(seed)
    return ImageEmbeds(torch.randn(n, tokens, width, generator=g),
                       torch.randn(n, tokens, width, generator=g),
                       torch.randn(n, pooled, generator=g), torch.randn(n, pooled, generator=g))


@pytest.fixture(scope="module")
def golden_cond():
    return load_file(GOLDEN / "resampler" / "adapter_sdxl_conditioning.safetensors")


@pytest.fixture(scope="module")
def x_64tok():
    return load_file(GOLDEN / "resampler" / "detok_resampler_io.safetensors")["x_64tok"][:1]


# --- golden conditioning ------------------------------------------------------------------------

SIZE = dict(height=32, width=32, original_size=(1024, 1024), target_size=(1024, 1024))


def test_plain_conditioning_and_unet_inputs(vit, golden_cond, x_64tok):
    adapter = SDXLAdapter(make_unet(), make_resampler(), vit_down=True,
                          vae=make_vae(), scheduler=make_scheduler(), vit=vit)
    embeds = adapter.get_image_embeds(image_embeds=x_64tok)
    for name, suffix in FIXTURE_NAMES.items():
        torch.testing.assert_close(getattr(embeds, name), golden_cond[f"plain_{suffix}"], **TOL)

    calls = capture_unet_calls(adapter.unet)
    adapter.generate(image_embeds=x_64tok, seed=0, num_inference_steps=2, output_type="latent",
                     **SIZE)
    step0 = calls[0]
    for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
        torch.testing.assert_close(step0[name], golden_cond[f"plain_unet_step0_{name}"], **TOL)
    assert [float(c["timestep"]) for c in calls] == [
        float(golden_cond["plain_unet_step0_timestep"]), float(golden_cond["plain_unet_step1_timestep"])
    ] == [501.0, 1.0]


def test_image_pil_conditioning_uses_256_tokens(vit, golden_cond):
    adapter = SDXLAdapter(make_unet(), make_resampler(), vit_down=True, vit=vit)
    source = Image.fromarray(load_file(GOLDEN / "vit" / "input.safetensors")
                             ["source_image_uint8_hwc"].numpy())
    seen = []
    adapter.resampler.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    embeds = adapter.get_image_embeds(image_pil=source)
    for name, suffix in FIXTURE_NAMES.items():
        torch.testing.assert_close(getattr(embeds, name), golden_cond[f"imgpil_{suffix}"], **TOL)
    assert seen == [torch.Size([2, 256, 256])]  # positive and negative, no vit_down


def test_edit_conditioning_and_unet_inputs(vit, golden_cond, x_64tok):
    adapter = SDXLAdapterWithLatentImage(make_unet(), make_resampler(), vae=make_vae(),
                                         scheduler=make_scheduler(), vit=vit)
    source = synthetic_image(32, 32, seed=3)
    calls = capture_unet_calls(adapter.unet)
    adapter.generate(image_embeds=x_64tok, latent_image=source, seed=0, num_inference_steps=2,
                     output_type="latent", **SIZE)
    step0 = calls[0]
    for name in ("encoder_hidden_states", "text_embeds", "time_ids", "timestep"):
        torch.testing.assert_close(step0[name].reshape(golden_cond[f"edit_unet_step0_{name}"].shape),
                                   golden_cond[f"edit_unet_step0_{name}"], **TOL)
    # sample = [scaled latents x3 | img, img, 0], img latents = VAE mode, NOT scaled
    pixels = adapter.image_processor.preprocess(source, height=32, width=32)
    img = adapter.vae.encode(pixels).latent_dist.mode()
    sample = step0["sample"]
    assert sample.shape == (3, 8, 16, 16)
    torch.testing.assert_close(sample[:, 4:], torch.cat([img, img, torch.zeros_like(img)]), **TOL)
    torch.testing.assert_close(sample[0, :4], sample[1, :4], atol=0, rtol=0)
    torch.testing.assert_close(sample[0, :4], sample[2, :4], atol=0, rtol=0)


def test_negative_vit_features_are_cached(vit, golden_cond, x_64tok):
    adapter = SDXLAdapter(make_unet(), make_resampler(), vit_down=True, vit=vit)
    calls = []
    handle = vit.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    try:
        first = adapter.get_image_embeds(image_embeds=x_64tok)
        second = adapter.get_image_embeds(image_embeds=x_64tok)
        assert len(calls) == 1  # ViT(grey) once, then from the cache
        torch.testing.assert_close(first.negative_prompt_embeds, second.negative_prompt_embeds,
                                   atol=0, rtol=0)
        adapter.clear_negative_cache()
        adapter.get_image_embeds(image_embeds=x_64tok)
        assert len(calls) == 2
    finally:
        handle.remove()
    neg = adapter.negative_vit_features(vit)
    torch.testing.assert_close(neg, load_file(GOLDEN / "vit" / "output.safetensors")["output_zeros448"],
                               **TOL)
    torch.testing.assert_close(
        vit_down(neg), load_file(GOLDEN / "resampler" / "detok_resampler_io.safetensors")["neg_vit_down_feat"],
        **TOL)


def test_batch_of_features_repeats_the_negative(vit, x_64tok):
    adapter = SDXLAdapter(make_unet(), make_resampler(), vit_down=True, vit=vit)
    x2 = torch.cat([x_64tok, x_64tok.flip(1)])
    one = adapter.get_image_embeds(image_embeds=x_64tok)
    two = adapter.get_image_embeds(image_embeds=x2)
    assert two.prompt_embeds.shape[0] == two.negative_prompt_embeds.shape[0] == 2
    torch.testing.assert_close(two.prompt_embeds[:1], one.prompt_embeds, **TOL)
    torch.testing.assert_close(two.negative_pooled_prompt_embeds[1:], one.negative_pooled_prompt_embeds,
                               **TOL)


# --- our loops == diffusers' pipelines ----------------------------------------------------------

STEPS = 3


def sdxl_pipeline(adapter):
    pipe = StableDiffusionXLPipeline(vae=adapter.vae, unet=adapter.unet, scheduler=make_scheduler(),
                                     text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, add_watermarker=False)
    assert pipe.watermark is None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipe_kwargs(embeds):
    return dict(prompt_embeds=embeds.prompt_embeds, negative_prompt_embeds=embeds.negative_prompt_embeds,
                pooled_prompt_embeds=embeds.pooled_prompt_embeds,
                negative_pooled_prompt_embeds=embeds.negative_pooled_prompt_embeds,
                num_inference_steps=STEPS, guidance_scale=7.5, height=32, width=32)


@pytest.mark.parametrize("output_type", ["latent", "pil"])
def test_stage1_loop_equals_sdxl_pipeline(output_type):
    adapter = SDXLAdapter(make_unet(), make_resampler(), vae=make_vae(), scheduler=make_scheduler())
    embeds = random_embeds()
    ours = adapter.generate_from_embeds(embeds, generator=torch.Generator().manual_seed(7),
                                        num_inference_steps=STEPS, height=32, width=32,
                                        output_type=output_type)
    theirs = sdxl_pipeline(adapter)(**pipe_kwargs(embeds), generator=torch.Generator().manual_seed(7),
                                    output_type=output_type).images
    if output_type == "latent":
        assert ours.shape == (1, 4, 16, 16)
        torch.testing.assert_close(ours, theirs, **TOL)
    else:
        assert len(ours) == 1 and ours[0].size == (32, 32)
        diff = np.abs(np.asarray(ours[0], dtype=np.int16) - np.asarray(theirs[0], dtype=np.int16))
        assert diff.max() <= 1


def test_stage1_seed_is_generator_seed():
    adapter = SDXLAdapter(make_unet(), make_resampler(), vae=make_vae(), scheduler=make_scheduler())
    embeds = random_embeds()
    common = dict(num_inference_steps=2, height=32, width=32, output_type="latent")
    a = adapter.generate_from_embeds(embeds, seed=42, **common)
    b = adapter.generate_from_embeds(embeds, generator=torch.Generator().manual_seed(42), **common)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="seed=42"):
        adapter.generate_from_embeds(embeds, **common)


@pytest.mark.parametrize("output_type", ["latent", "pil"])
def test_stage2_loop_equals_instruct_pix2pix_pipeline(output_type):
    adapter = SDXLAdapterWithLatentImage(make_unet(), make_resampler(), vae=make_vae(),
                                         scheduler=make_scheduler())
    embeds = random_embeds(seed=6)
    source = synthetic_image(32, 32, seed=3)
    ours = adapter.generate_from_embeds(embeds, latent_image=source,
                                        generator=torch.Generator().manual_seed(9),
                                        num_inference_steps=STEPS, height=32, width=32,
                                        output_type=output_type)
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        vae=adapter.vae, unet=adapter.unet, scheduler=make_scheduler(), text_encoder=None,
        text_encoder_2=None, tokenizer=None, tokenizer_2=None, add_watermarker=False,
        is_cosxl_edit=False)
    assert pipe.watermark is None
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(**pipe_kwargs(embeds), image=source, image_guidance_scale=1.5,
                  generator=torch.Generator().manual_seed(9), output_type=output_type).images
    if output_type == "latent":
        torch.testing.assert_close(ours, theirs, **TOL)
    else:
        diff = np.abs(np.asarray(ours[0], dtype=np.int16) - np.asarray(theirs[0], dtype=np.int16))
        assert diff.max() <= 1


def test_stage2_without_source_image_uses_zero_latents():
    adapter = SDXLAdapterWithLatentImage(make_unet(), make_resampler(), vae=make_vae(),
                                         scheduler=make_scheduler())
    calls = capture_unet_calls(adapter.unet)
    adapter.generate_from_embeds(random_embeds(), seed=0, num_inference_steps=1, height=32,
                                 width=32, output_type="latent")
    assert calls[0]["sample"].shape == (3, 8, 16, 16) and not calls[0]["sample"][:, 4:].any()


# --- callbacks and cancellation ---------------------------------------------------------------

def test_callback_sees_every_step():
    adapter = SDXLAdapter(make_unet(), make_resampler(), vae=make_vae(), scheduler=make_scheduler())
    seen = []

    def on_step(pipe, i, t, kwargs):
        seen.append((i, pipe.num_timesteps, int(t), kwargs["latents"].shape))
        return {}

    adapter.generate_from_embeds(random_embeds(), seed=0, num_inference_steps=3, height=32,
                                 width=32, output_type="latent", callback_on_step_end=on_step)
    assert [(i, n) for i, n, _, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    assert [t for _, _, t, _ in seen] == [667, 334, 1]


def test_callback_can_replace_latents():
    adapter = SDXLAdapter(make_unet(), make_resampler(), vae=make_vae(), scheduler=make_scheduler())
    out = adapter.generate_from_embeds(random_embeds(), seed=0, num_inference_steps=2, height=32,
                                       width=32, output_type="latent",
                                       callback_on_step_end=lambda p, i, t, k: {"latents": k["latents"] * 0})
    assert not out.any()


@pytest.mark.parametrize("how", ["event", "callable", "flag"])
def test_cancel_stops_early(how):
    """``cancel`` (an event or a callable) and diffusers' ``_interrupt`` flag both stop the loop."""
    adapter = SDXLAdapter(make_unet(), make_resampler(), vae=make_vae(), scheduler=make_scheduler())
    calls = capture_unet_calls(adapter.unet)
    event = threading.Event()

    def on_step(pipe, i, t, kwargs):
        if i == 1:
            if how == "flag":
                pipe._interrupt = True
            else:
                event.set()
        return {}

    cancel = {"event": event, "callable": event.is_set, "flag": None}[how]
    with pytest.raises(DenoisingCancelled) as info:
        adapter.generate_from_embeds(random_embeds(), seed=0, num_inference_steps=5, height=32,
                                     width=32, callback_on_step_end=on_step, cancel=cancel)
    assert (info.value.step_index, info.value.num_steps) == (2, 5)
    assert info.value.latents.shape == (1, 4, 16, 16)
    assert len(calls) == 2
    assert not adapter.generate_from_embeds(random_embeds(), seed=0, num_inference_steps=1,
                                            height=32, width=32, output_type="latent").isnan().any()


# --- construction and key manifests -------------------------------------------------------------

def test_stage2_conv_in_surgery():
    unet = make_unet()
    old = unet.conv_in.weight.detach().clone()
    adapter = SDXLAdapterWithLatentImage(unet, make_resampler())
    conv = adapter.unet.conv_in
    assert adapter.unet.config.in_channels == 8 and conv.weight.shape[1] == 8
    torch.testing.assert_close(conv.weight[:, :4], old, atol=0, rtol=0)
    assert not conv.weight[:, 4:].any()
    # already 8 channels: used as is
    again = SDXLAdapterWithLatentImage(make_unet(in_channels=8), make_resampler())
    assert again.unet.conv_in.weight.shape[1] == 8 and again.unet.config.in_channels == 8


def load_manifest(name):
    return {k: tuple(v[0]) for k, v in json.loads((GOLDEN / "manifests" / name).read_text()).items()}


@pytest.fixture(scope="module")
def full_stage1():
    return SDXLAdapter.from_config(SeedXConfig(), device="meta")


def test_full_size_stage1_manifests(full_stage1):
    adapter = full_stage1
    whole = {k: tuple(v.shape) for k, v in adapter.state_dict().items()}
    assert whole == load_manifest("detokenizer_first_stage_SDXLAdapter.json")
    keys = expected_stage1_keys(adapter)
    assert expected_shapes(adapter, keys) == load_manifest("detokenizer_first_stage_trainable_subset.json")
    trainable = {f"{n}" for n, p in adapter.named_parameters() if p.requires_grad}
    assert trainable == keys  # set_trainable mirrors what the checkpoint holds


def test_full_size_stage2_manifest():
    adapter = SDXLAdapterWithLatentImage.from_config(SeedXConfig(), device="meta")
    keys = expected_stage2_keys(adapter)
    assert expected_shapes(adapter, keys) == load_manifest(
        "detokenizer_second_stage_SDXLAdapterWithLatentImage.json")
    assert adapter.unet.config.in_channels == 8


def test_apply_weights_checks_keys_and_shapes():
    adapter = SDXLAdapter(make_unet(), make_resampler())
    source = SDXLAdapter(make_unet(seed=3), make_resampler())
    stage1 = {k: v for k, v in source.state_dict().items() if k in expected_stage1_keys(source)}
    loaded = apply_detokenizer_weights(adapter, stage1, stage=1)
    assert loaded == expected_stage1_keys(adapter)
    for key in stage1:
        torch.testing.assert_close(adapter.state_dict()[key], stage1[key], atol=0, rtol=0)
    missing = dict(stage1)
    missing.pop(next(k for k in missing if k.startswith("unet.")))
    with pytest.raises(ValueError, match="missing 1"):
        apply_detokenizer_weights(adapter, missing, stage=1)
    with pytest.raises(ValueError, match="unexpected 1"):
        apply_detokenizer_weights(adapter, {**stage1, "unet.nope": torch.zeros(1)}, stage=1)

    stage2_adapter = SDXLAdapterWithLatentImage(make_unet(), make_resampler())
    full = SDXLAdapterWithLatentImage(make_unet(seed=4), make_resampler()).state_dict()
    assert apply_detokenizer_weights(stage2_adapter, full, stage=2) == expected_stage2_keys(stage2_adapter)
    four_channel = {**full, "unet.conv_in.weight": full["unet.conv_in.weight"][:, :4]}
    with pytest.raises(ValueError, match="wrong shape 1"):
        apply_detokenizer_weights(stage2_adapter, four_channel, stage=2)
