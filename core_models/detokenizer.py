"""The SEED-X visual de-tokenizer: ViT-like features -> SDXL latents -> pixels.

SEED-X never decodes pixels itself. The MLLM regresses 64 ViT-like feature tokens
(``img_gen_feat``) and this module turns them into an image with a *stock* SDXL-base UNet and VAE
whose two CLIP text encoders are replaced by ``ResamplerXLV2``: the resampler's ``prompt_embeds``
stand in for the 77 CLIP tokens (``encoder_hidden_states``) and its pooled output for SDXL's
``text_embeds``. Two stages were released:

* ``SDXLAdapter`` (stage 1, SEED-X / SEED-X-I): plain text-to-image SDXL, 2-way classifier-free
  guidance against the features of a *grey* image (ViT of the all-zero normalised tensor).
* ``SDXLAdapterWithLatentImage`` (stage 2, SEED-X-Edit): InstructPix2Pix-style SDXL whose UNet
  takes 8 input channels, the noisy latents plus the VAE latents of a source image, with 3-way
  guidance (features and source image guided separately).

Upstream ran both through diffusers pipelines (``StableDiffusionXLPipeline`` and a custom
``StableDiffusionXLText2ImageAndEditPipeline``). We keep diffusers' UNet, VAE and
``EulerDiscreteScheduler`` but write the ~40-line Euler loop out ourselves: the text-encoder
machinery, watermark, LoRA hooks and ``guidance_rescale`` of those pipelines are dead weight here,
and a visible loop is where progress reporting and cancellation belong. The tests check that the
loop matches both diffusers pipelines numerically.

Parameter names are the official state-dict keys (``unet.*``, ``resampler.*``); the VAE, scheduler
and ViT are attached as plain attributes (not sub-modules) so they never enter the state dict,
exactly like upstream's ``init_pipe``.

Progress and cancellation follow diffusers' step-callback contract:
``callback_on_step_end(adapter, step_index, timestep, callback_kwargs) -> dict`` is called after
every step with ``callback_kwargs = {"latents": ...}``; a returned ``"latents"`` replaces the
latents. Before every step the loop checks the ``cancel`` argument (a ``threading.Event`` or a
zero-argument callable, the product's one name for cancellation, see `core_models.cancel`) and
the diffusers-style ``adapter._interrupt`` flag a callback may set (diffusers' contract, kept so
diffusers callbacks work unchanged). **Deliberate difference from diffusers:** a cancelled run
raises ``DenoisingCancelled`` instead of silently skipping the remaining steps and decoding a
half-denoised image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from .cancel import CancelCheck, is_cancelled
from .config import SeedXConfig
from .detokenizer_resampler import ResamplerXLV2
from .qwen_vit import image_transform, negative_pixel_values

# Defaults of upstream's ``generate`` (``adapter_modules.py``). Note: upstream's stage-1 default is
# ``seed=42`` too in the released code (not ``None``); the inference scripts pass 50 steps.
UPSTREAM_SEED = 42
UPSTREAM_NUM_INFERENCE_STEPS = 30
SCRIPTS_NUM_INFERENCE_STEPS = 50
UPSTREAM_GUIDANCE_SCALE = 7.5
UPSTREAM_IMAGE_GUIDANCE_SCALE = 1.5  # pipeline default, never overridden by SEED-X
UPSTREAM_IMAGE_SIZE = 1024

StepCallback = Callable[[Any, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


class DenoisingCancelled(RuntimeError):
    """Raised when ``cancel`` fires (or a callback sets ``_interrupt``) before step
    ``step_index`` of ``num_steps`` ran.

    ``latents`` holds the (partially denoised) latents at that point, for callers that want them.
    """

    def __init__(self, step_index: int, num_steps: int, latents: torch.Tensor | None = None):
        super().__init__(f"denoising cancelled before step {step_index} of {num_steps}")
        self.step_index = step_index
        self.num_steps = num_steps
        self.latents = latents


class ImageEmbeds(NamedTuple):
    """What ``get_image_embeds`` returns, in upstream's tuple order (so it unpacks the same way)."""

    prompt_embeds: torch.Tensor  # (N, num_queries, out1 + out2): encoder_hidden_states
    negative_prompt_embeds: torch.Tensor | None
    pooled_prompt_embeds: torch.Tensor  # (N, output2_dim): added_cond_kwargs["text_embeds"]
    negative_pooled_prompt_embeds: torch.Tensor | None


def vit_down(features: torch.Tensor) -> torch.Tensor:
    """256 -> 64 tokens: a 1-D average over 4 *consecutive* tokens (1x4 strips, not 2x2 blocks).

    This is how the MLLM's regression targets were made, so the de-tokenizer was trained on it.
    """
    return F.avg_pool1d(features.permute(0, 2, 1), kernel_size=4, stride=4).permute(0, 2, 1)


# =================================================================================================
# Stage 1
# =================================================================================================

class SDXLAdapter(nn.Module):
    """Stage 1: ``resampler`` turns features into SDXL conditioning for a stock 4-channel ``unet``.

    ``vit_down=True`` (the released config) pools the *negative* ViT features to 64 tokens when
    the conditioning comes in as features (the MLLM path); see ``get_image_embeds``. ``full_ft``
    only sets ``requires_grad`` as upstream's training did (stage 1: resampler + every ``to_k`` /
    ``to_v`` of the UNet). ``vae``, ``scheduler`` and ``vit`` are needed for generation only and
    can be attached later with ``init_pipe``.
    """

    def __init__(self, unet: UNet2DConditionModel, resampler: ResamplerXLV2, vit_down: bool = True,
                 full_ft: bool = False, *, vae=None, scheduler=None, vit: nn.Module | None = None):
        super().__init__()
        self.unet = unet
        self.resampler = resampler
        self.vit_down = vit_down
        self.full_ft = full_ft
        self.set_trainable()
        self._negative_cache: dict[tuple, tuple[nn.Module, torch.Tensor]] = {}
        self._interrupt = False
        self._num_timesteps = 0
        self.init_pipe(vae=vae, scheduler=scheduler, vit=vit)

    @classmethod
    def from_config(cls, config: SeedXConfig, *, device: torch.device | str | None = None,
                    **kwargs) -> "SDXLAdapter":
        """Build ``unet`` and ``resampler`` from a ``SeedXConfig`` (``device="meta"``: free)."""
        with torch.device(device or "cpu"):
            unet = UNet2DConditionModel(**config.unet)
            resampler = ResamplerXLV2(**config.detokenizer_resampler)
            return cls(unet, resampler, **kwargs)

    def init_pipe(self, vae=None, scheduler=None, vit: nn.Module | None = None) -> None:
        """Attach the generation-only parts without registering them (state dict stays clean).

        Like upstream's ``init_pipe``; ``adapter.to(...)`` therefore does not move them.
        """
        self.__dict__["vae"] = vae
        self.__dict__["scheduler"] = scheduler
        self.__dict__["vit"] = vit
        if vae is not None:
            self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    def set_trainable(self) -> None:
        """Upstream's ``set_trainable_v2``: what training touched (and checkpoints hold)."""
        self.resampler.requires_grad_(True)
        self.unet.requires_grad_(self.full_ft)
        if not self.full_ft:
            for name, module in self.unet.named_modules():
                if name.endswith("to_k") or name.endswith("to_v"):
                    module.requires_grad_(True)

    # --- conditioning -------------------------------------------------------------------------
    def encode_image_embeds(self, image_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.resampler(image_embeds)

    def clear_negative_cache(self) -> None:
        """Forget cached ViT(grey) features; call after loading new ViT weights in place."""
        self._negative_cache.clear()

    def negative_vit_features(self, vit: nn.Module, image_size: int | None = None) -> torch.Tensor:
        """ViT of the all-zero *normalised* image (CLIP-mean grey), ``(1, 256, D)``, cached.

        It depends only on the ViT weights, so it is computed once per (vit, size, device, dtype)
        rather than on every call as upstream does (upstream batches it with the positive image;
        the numbers agree to float rounding).
        """
        image_size = image_size or vit.image_size[0]
        param = next(vit.parameters())
        key = (id(vit), image_size, param.device, param.dtype)
        cached = self._negative_cache.get(key)
        if cached is None or cached[0] is not vit:
            with torch.no_grad():
                pixels = negative_pixel_values(image_size).to(param.device, param.dtype)
                cached = (vit, vit(pixels))
            self._negative_cache[key] = cached
        return cached[1]

    @torch.no_grad()
    def get_image_embeds(self, image_embeds: torch.Tensor | None = None,
                         image_pil: Image.Image | Sequence[Image.Image] | None = None,
                         vit: nn.Module | None = None, return_negative: bool = True,
                         image_size: int | None = None) -> ImageEmbeds:
        """Conditioning for SDXL from features *or* PIL images, plus the CFG negative.

        * ``image_embeds`` (N, L, D), the MLLM's ``img_gen_feat`` (L = 64): the negative is
          ``resampler(vit_down(ViT(grey)))`` when ``vit_down`` (64 tokens, like the positives).
        * ``image_pil``: the 448 bilinear CLIP transform, then ViT, then the **raw 256 tokens** go
          into the resampler (no ``vit_down``, as in upstream's reconstruction script), and so do
          the negative's 256 tokens.

        Upstream only handles one image per call (it ``chunk(2)``s a batch of N + 1); here the one
        negative is repeated N times, which gives the same numbers for N = 1.
        """
        if (image_embeds is None) == (image_pil is None):
            raise ValueError("pass exactly one of image_embeds or image_pil")
        vit = vit if vit is not None else self.vit
        if vit is None and (image_pil is not None or return_negative):
            raise ValueError("a ViT is needed (pass vit= or attach one with init_pipe)")

        if image_pil is not None:
            image_size = image_size or vit.image_size[0]
            param = next(vit.parameters())
            pixels = image_transform(image_pil, image_size).to(param.device, param.dtype)
            image_embeds = vit(pixels)
            negative = self.negative_vit_features(vit, image_size) if return_negative else None
        else:
            negative = None
            if return_negative:
                negative = self.negative_vit_features(vit, image_size)
                if self.vit_down:
                    negative = vit_down(negative)
                negative = negative.to(image_embeds.device, image_embeds.dtype)

        n = image_embeds.size(0)
        if negative is None:
            prompt_embeds, pooled = self.encode_image_embeds(image_embeds)
            return ImageEmbeds(prompt_embeds, None, pooled, None)
        both = torch.cat([image_embeds, negative.to(image_embeds.dtype).expand(n, -1, -1)], dim=0)
        prompt_embeds, pooled = self.encode_image_embeds(both)
        return ImageEmbeds(prompt_embeds[:n], prompt_embeds[n:], pooled[:n], pooled[n:])

    # --- generation ---------------------------------------------------------------------------
    @property
    def interrupt(self) -> bool:
        """diffusers-style flag; a step callback may set ``adapter._interrupt = True``."""
        return self._interrupt

    @property
    def num_timesteps(self) -> int:
        """Number of denoising steps of the current / last run (for ``i / num_timesteps``)."""
        return self._num_timesteps

    def generate(self, image_embeds: torch.Tensor | None = None,
                 image_pil: Image.Image | Sequence[Image.Image] | None = None, *,
                 vit: nn.Module | None = None, input_image_size: int | None = None,
                 **kwargs) -> list[Image.Image] | torch.Tensor:
        """Features or PIL image(s) -> images. See ``generate_from_embeds`` for the other arguments.

        Upstream: ``generate(image_pil, image_tensor, image_embeds, seed=42, height=1024,
        width=1024, guidance_scale=7.5, num_inference_steps=30, input_image_size=448)``.
        """
        embeds = self.get_image_embeds(image_embeds=image_embeds, image_pil=image_pil, vit=vit,
                                       return_negative=True, image_size=input_image_size)
        return self.generate_from_embeds(embeds, **kwargs)

    @torch.no_grad()
    def generate_from_embeds(
        self, embeds: ImageEmbeds, *, generator: torch.Generator | None = None,
        seed: int | None = None, height: int = UPSTREAM_IMAGE_SIZE,
        width: int = UPSTREAM_IMAGE_SIZE,
        num_inference_steps: int = UPSTREAM_NUM_INFERENCE_STEPS,
        guidance_scale: float = UPSTREAM_GUIDANCE_SCALE, latents: torch.Tensor | None = None,
        callback_on_step_end: StepCallback | None = None, cancel: CancelCheck = None,
        output_type: str = "pil", original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """Run SDXL on ready-made conditioning (``get_image_embeds``' output).

        Randomness must be explicit: a ``generator`` or a ``seed`` (upstream defaults to
        ``seed=42``, i.e. ``UPSTREAM_SEED``). ``original_size`` / ``target_size`` default to
        ``(height, width)`` (SDXL micro-conditioning, ``[H, W, 0, 0, H, W]``). ``output_type``:
        ``"pil"`` (list of images), ``"np"``, ``"pt"`` or ``"latent"`` (the final latents).
        """
        generator = self._generator(generator, seed)
        do_cfg = guidance_scale > 1.0
        branches = self._branches(embeds, do_cfg)  # (prompt_embeds, text_embeds) per CFG branch
        batch = embeds.prompt_embeds.size(0)
        latents = self._prepare_latents(batch, height, width, generator, latents)
        time_ids = self._time_ids(original_size or (height, width), crops_coords_top_left,
                                  target_size or (height, width), branches[1])

        def predict_noise(scheduler, latents, t):
            x = scheduler.scale_model_input(torch.cat([latents] * 2) if do_cfg else latents, t)
            eps = self._unet(x, t, branches, time_ids)
            if not do_cfg:
                return eps
            eps_uncond, eps_cond = eps.chunk(2)  # batch order [negative, positive]
            return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

        latents = self._denoise(latents, num_inference_steps, predict_noise, generator,
                                callback_on_step_end, cancel)
        return self.decode_latents(latents, output_type)

    def _branches(self, embeds: ImageEmbeds, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL's CFG batch: ``[negative, positive]``."""
        if not do_cfg:
            return embeds.prompt_embeds, embeds.pooled_prompt_embeds
        self._require_negative(embeds)
        return (torch.cat([embeds.negative_prompt_embeds, embeds.prompt_embeds]),
                torch.cat([embeds.negative_pooled_prompt_embeds, embeds.pooled_prompt_embeds]))

    # --- the loop and its parts (shared by both stages) -------------------------------------------
    def _denoise(self, latents: torch.Tensor, num_inference_steps: int,
                 predict_noise: Callable, generator: torch.Generator | None,
                 callback_on_step_end: StepCallback | None, cancel: CancelCheck) -> torch.Tensor:
        """Euler: for each timestep, predict (guided) noise and let the scheduler step.

        A fresh scheduler per call (same config) keeps concurrent runs from sharing step state.
        """
        scheduler = self._fresh_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=latents.device)
        scheduler.set_begin_index(0)
        timesteps = scheduler.timesteps
        latents = latents * scheduler.init_noise_sigma
        self._interrupt = False
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(timesteps):
            if self._interrupt or is_cancelled(cancel):
                raise DenoisingCancelled(i, len(timesteps), latents)
            noise_pred = predict_noise(scheduler, latents, t)
            latents = scheduler.step(noise_pred, t, latents, generator=generator,
                                     return_dict=False)[0]
            if callback_on_step_end is not None:
                outputs = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                latents = outputs.pop("latents", latents)
        return latents

    def _unet(self, sample: torch.Tensor, t: torch.Tensor,
              branches: tuple[torch.Tensor, torch.Tensor], time_ids: torch.Tensor) -> torch.Tensor:
        prompt_embeds, text_embeds = branches
        return self.unet(sample, t, encoder_hidden_states=prompt_embeds,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                         return_dict=False)[0]

    def _fresh_scheduler(self) -> EulerDiscreteScheduler:
        if self.scheduler is None:
            raise ValueError("no scheduler attached (init_pipe(vae=..., scheduler=...))")
        return type(self.scheduler).from_config(self.scheduler.config)

    def _generator(self, generator: torch.Generator | None, seed: int | None) -> torch.Generator:
        if generator is not None and seed is not None:
            raise ValueError("pass generator or seed, not both")
        if generator is not None:
            return generator
        if seed is None:
            raise ValueError(f"pass generator= or seed= (upstream's default: seed={UPSTREAM_SEED})")
        return torch.Generator(device=self.unet.device).manual_seed(seed)

    def _prepare_latents(self, batch: int, height: int, width: int,
                         generator: torch.Generator, latents: torch.Tensor | None) -> torch.Tensor:
        """Unit Gaussian noise at latent resolution (``_denoise`` scales it by init_noise_sigma)."""
        if self.vae is None:
            raise ValueError("no VAE attached (init_pipe(vae=..., scheduler=...))")
        shape = (batch, self.vae.config.latent_channels,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            return randn_tensor(shape, generator=generator, device=self.unet.device,
                                dtype=self.unet.dtype)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must be {shape}, got {tuple(latents.shape)}")
        return latents.to(self.unet.device, self.unet.dtype)

    def _time_ids(self, original_size, crops_coords_top_left, target_size,
                  text_embeds: torch.Tensor) -> torch.Tensor:
        """SDXL micro-conditioning ``[orig_h, orig_w, top, left, target_h, target_w]`` per row."""
        time_ids = list(original_size) + list(crops_coords_top_left) + list(target_size)
        passed = self.unet.config.addition_time_embed_dim * len(time_ids) + text_embeds.size(-1)
        expected = self.unet.add_embedding.linear_1.in_features
        if passed != expected:
            raise ValueError(f"UNet add_embedding expects {expected} inputs, conditioning gives "
                             f"{passed} (addition_time_embed_dim * 6 + pooled width)")
        return torch.tensor([time_ids], dtype=self.unet.dtype,
                            device=self.unet.device).repeat(text_embeds.size(0), 1)

    @staticmethod
    def _require_negative(embeds: ImageEmbeds) -> None:
        if embeds.negative_prompt_embeds is None or embeds.negative_pooled_prompt_embeds is None:
            raise ValueError("classifier-free guidance needs the negative embeddings "
                             "(get_image_embeds(..., return_negative=True))")

    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil"):
        """``latents / scaling_factor`` through the VAE, in fp32 when an fp16 VAE asks to upcast."""
        if output_type == "latent":
            return latents
        vae = self.vae
        needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcasting:
            vae.to(dtype=torch.float32)
        try:
            latents = latents.to(vae.device, vae.dtype)
            mean = getattr(vae.config, "latents_mean", None)
            std = getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
                std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
                latents = latents * std / vae.config.scaling_factor + mean
            else:
                latents = latents / vae.config.scaling_factor
            image = vae.decode(latents, return_dict=False)[0]
        finally:
            if needs_upcasting:
                vae.to(dtype=torch.float16)
        return self.image_processor.postprocess(image, output_type=output_type)


# =================================================================================================
# Stage 2
# =================================================================================================

class SDXLAdapterWithLatentImage(SDXLAdapter):
    """Stage 2: the UNet also sees the VAE latents of a source image (8 input channels).

    At construction a 4-channel UNet gets upstream's surgery: ``in_channels=8`` in its config and
    a new ``conv_in`` whose weight keeps the SDXL filters on channels 0-3, zeros on 4-7 (so the
    untrained model ignores the source image) and a *freshly initialised* bias (upstream does not
    copy it; the stage-2 checkpoint overwrites it anyway). A UNet that already has 8 channels is
    used as is. Released config: ``full_ft=True``, ``vit_down=True``.
    """

    def __init__(self, unet: UNet2DConditionModel, resampler: ResamplerXLV2, vit_down: bool = True,
                 full_ft: bool = True, **kwargs):
        self._widen_conv_in(unet)
        super().__init__(unet, resampler, vit_down=vit_down, full_ft=full_ft, **kwargs)

    @staticmethod
    def _widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> None:
        old = unet.conv_in
        if old.in_channels == in_channels:
            unet.register_to_config(in_channels=in_channels)
            return
        unet.register_to_config(in_channels=in_channels)
        new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                        device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :old.in_channels].copy_(old.weight)
        unet.conv_in = new

    def set_trainable(self) -> None:
        """Upstream's ``set_trainable``: conv_in always, then everything (full_ft) or to_k/to_v."""
        super().set_trainable()
        self.unet.conv_in.requires_grad_(True)

    def generate(self, image_embeds: torch.Tensor | None = None,
                 image_pil: Image.Image | Sequence[Image.Image] | None = None, *,
                 latent_image: Image.Image | torch.Tensor | None = None,
                 vit: nn.Module | None = None, input_image_size: int | None = None,
                 **kwargs) -> list[Image.Image] | torch.Tensor:
        """Features or PIL image(s) plus an optional source image -> edited images.

        Upstream: ``generate(..., latent_image=None, seed=42, guidance_scale=7.5, ...)``; the edit
        script passes the source resized to 1024x1024.
        """
        embeds = self.get_image_embeds(image_embeds=image_embeds, image_pil=image_pil, vit=vit,
                                       return_negative=True, image_size=input_image_size)
        return self.generate_from_embeds(embeds, latent_image=latent_image, **kwargs)

    @torch.no_grad()
    def generate_from_embeds(
        self, embeds: ImageEmbeds, *, latent_image: Image.Image | torch.Tensor | None = None,
        generator: torch.Generator | None = None, seed: int | None = None,
        height: int = UPSTREAM_IMAGE_SIZE, width: int = UPSTREAM_IMAGE_SIZE,
        num_inference_steps: int = UPSTREAM_NUM_INFERENCE_STEPS,
        guidance_scale: float = UPSTREAM_GUIDANCE_SCALE,
        image_guidance_scale: float = UPSTREAM_IMAGE_GUIDANCE_SCALE,
        latents: torch.Tensor | None = None, callback_on_step_end: StepCallback | None = None,
        cancel: CancelCheck = None, output_type: str = "pil",
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None,
    ) -> list[Image.Image] | torch.Tensor:
        """3-way guided SDXL: ``uncond + g (text - image) + ig (image - uncond)``.

        Branch order is ``[positive, negative, negative]`` with source latents ``[img, img, 0]``:
        "text" sees features and image, "image" sees only the image, "uncond" neither. Without a
        ``latent_image`` all three get zero latents (upstream's custom pipeline; diffusers' IP2P
        pipeline requires an image). Guidance is on when ``g > 1`` and ``ig >= 1``.

        Upstream's pipeline applies the guidance to x0 = x - sigma * eps and converts back; the
        coefficients sum to 1 so that equals guidance on eps (what diffusers' IP2P does, and we),
        up to float rounding. The source image is resized to ``(height, width)`` like diffusers'
        IP2P (upstream passes it at its own size, which must then already match).
        """
        generator = self._generator(generator, seed)
        do_cfg = guidance_scale > 1.0 and image_guidance_scale >= 1.0
        branches = self._branches(embeds, do_cfg)
        n_branches = 3 if do_cfg else 1
        batch = embeds.prompt_embeds.size(0)
        latents = self._prepare_latents(batch, height, width, generator, latents)
        time_ids = self._time_ids(original_size or (height, width), crops_coords_top_left,
                                  target_size or (height, width), branches[1])
        image_latents = self.encode_source_image(latent_image, batch, height, width, do_cfg)

        def predict_noise(scheduler, latents, t):
            x = scheduler.scale_model_input(torch.cat([latents] * n_branches), t)
            source = image_latents if image_latents is not None else torch.zeros_like(x)
            eps = self._unet(torch.cat([x, source], dim=1), t, branches, time_ids)
            if not do_cfg:
                return eps
            eps_text, eps_image, eps_uncond = eps.chunk(3)
            return (eps_uncond + guidance_scale * (eps_text - eps_image)
                    + image_guidance_scale * (eps_image - eps_uncond))

        latents = self._denoise(latents, num_inference_steps, predict_noise, generator,
                                callback_on_step_end, cancel)
        return self.decode_latents(latents, output_type)

    def _branches(self, embeds: ImageEmbeds, do_cfg: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """InstructPix2Pix's CFG batch: ``[positive, negative, negative]``."""
        if not do_cfg:
            return embeds.prompt_embeds, embeds.pooled_prompt_embeds
        self._require_negative(embeds)
        e = embeds
        return (torch.cat([e.prompt_embeds, e.negative_prompt_embeds, e.negative_prompt_embeds]),
                torch.cat([e.pooled_prompt_embeds, e.negative_pooled_prompt_embeds,
                           e.negative_pooled_prompt_embeds]))

    def encode_source_image(self, image: Image.Image | torch.Tensor | None, batch: int,
                            height: int, width: int, do_cfg: bool) -> torch.Tensor | None:
        """``vae.encode(preprocess(image)).latent_dist.mode()``, **not** scaled by scaling_factor.

        That is the InstructPix2Pix convention the model was trained with (upstream issue #21
        asks about it). ``preprocess`` maps to [-1, 1]; an fp16 VAE with ``force_upcast`` encodes
        in fp32. Returns ``[img, img, zeros]`` (CFG) or ``[img]``, or ``None`` without an image.
        """
        if image is None:
            return None
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        pixels = pixels.to(self.unet.device, self.unet.dtype)
        vae = self.vae
        needs_upcasting = vae.dtype == torch.float16 and vae.config.force_upcast
        if needs_upcasting:
            vae.to(dtype=torch.float32)
        try:
            image_latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mode()
        finally:
            if needs_upcasting:
                vae.to(dtype=torch.float16)
        if image_latents.size(0) != batch:
            if batch % image_latents.size(0):
                raise ValueError(f"cannot repeat {image_latents.size(0)} source images to {batch}")
            image_latents = image_latents.repeat(batch // image_latents.size(0), 1, 1, 1)
        if do_cfg:
            zeros = torch.zeros_like(image_latents)
            image_latents = torch.cat([image_latents, image_latents, zeros])
        return image_latents.to(self.unet.dtype)


# =================================================================================================
# Which checkpoint keys each stage provides (for core_models/checkpoint.py)
# =================================================================================================

def expected_stage1_keys(adapter: SDXLAdapter) -> set[str]:
    """Keys the stage-1 file must provide: ``resampler.*`` and every UNet ``to_k``/``to_v`` tensor.

    Stage 1 trained exactly these (self- *and* cross-attention ``attn1``/``attn2``, no biases); the
    rest of the UNet is SDXL-base, so load the base UNet first and then this file *over* it.
    Whether the released file also stores the untouched ``unet.*`` keys is unknown, so a loader
    should accept (and may ignore) any other key of ``adapter.state_dict()``.
    """
    keys = {f"resampler.{k}" for k in adapter.resampler.state_dict()}
    for name, module in adapter.unet.named_modules():
        if name.endswith("to_k") or name.endswith("to_v"):
            keys |= {f"unet.{name}.{p}" for p, _ in module.named_parameters()}
    return keys


def expected_stage2_keys(adapter: SDXLAdapterWithLatentImage) -> set[str]:
    """Stage 2 trained the whole UNet (8-channel ``conv_in``): the file is the full state dict."""
    return set(adapter.state_dict())


def expected_shapes(adapter: SDXLAdapter, keys: set[str]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of ``keys`` in ``adapter`` (works on the ``meta`` device)."""
    state = adapter.state_dict()
    return {k: tuple(state[k].shape) for k in sorted(keys)}


def apply_detokenizer_weights(adapter: SDXLAdapter, state_dict: dict[str, torch.Tensor], *,
                              stage: int, assign: bool = False) -> set[str]:
    """Load a released de-tokenizer file over ``adapter`` after checking keys and shapes.

    ``stage=1``: every ``expected_stage1_keys`` must be present (apply it *after* the SDXL-base
    UNet weights). ``stage=2``: the full ``expected_stage2_keys``. Keys the adapter does not have,
    or with the wrong shape, are errors (upstream silently skipped them with ``strict=False``;
    here they would mean a wrong file). Returns the set of keys that were loaded.
    """
    if stage == 1:
        required = expected_stage1_keys(adapter)
    elif stage == 2:
        if not isinstance(adapter, SDXLAdapterWithLatentImage):
            raise TypeError("stage-2 weights need SDXLAdapterWithLatentImage (8-channel conv_in)")
        required = expected_stage2_keys(adapter)
    else:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    own = adapter.state_dict()
    missing = sorted(required - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(state_dict) & set(own)
                   if tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        def head(keys):
            return f"{len(keys)} {keys[:5]}{' ...' if len(keys) > 5 else ''}"
        raise ValueError(f"stage-{stage} de-tokenizer weights do not fit: missing {head(missing)}, "
                         f"unexpected {head(unexpected)}, wrong shape {head(wrong)}")
    adapter.load_state_dict(state_dict, strict=False, assign=assign)
    return set(state_dict)
