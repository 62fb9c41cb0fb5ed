"""One description of a whole SEED-X stack, official sizes by default.

Every field holds the *official constructor arguments under their official names*
(``VisionTransformerWithAttnPool``, ``Resampler``, ``ResamplerXLV2``, ``LlamaConfig``,
diffusers' ``UNet2DConditionModel`` / ``AutoencoderKL`` / ``EulerDiscreteScheduler``), so a
released yaml or ``config.json`` maps onto it 1:1 and each module is built with
``Module(**config.field)``. There is deliberately no ``_target_`` indirection: the classes are
fixed, only their sizes vary. The full stack, the tiny test stacks and the small trained Nano
are all instances of this one dataclass and go through the same code.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .files import write_json

OFFICIAL_RESOLUTION_GRIDS = ["1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2"]

# configs/visual_encoder/qwen_vitg_448.yaml (n_queries and patch_pos take their defaults).
OFFICIAL_VIT = dict(image_size=448, patch_size=14, width=1664, layers=48, heads=16,
                    mlp_ratio=4.9231, n_queries=256, output_dim=4096)

# seed_x*/llm/config.json of the release (Llama-2-13B-chat, vocab 32000 + 330 SEED-X tokens).
OFFICIAL_LLM = dict(vocab_size=32330, hidden_size=5120, intermediate_size=13824,
                    num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                    max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
                    hidden_act="silu", tie_word_embeddings=False, attention_bias=False,
                    bos_token_id=1, eos_token_id=2, pad_token_id=0)

# configs/clm_models/agent_seed_x*.yaml
OFFICIAL_INPUT_RESAMPLER = dict(grid_size=8, embed_dim=5120, num_heads=32, kv_dim=4096)
OFFICIAL_OUTPUT_RESAMPLER = dict(grid_size=8, embed_dim=4096, num_heads=32, kv_dim=5120)
OFFICIAL_AGENT = dict(lm_loss_scale=1.0, rec_loss_scale=6.0, add_patch_pos=True,
                      vit_down=True, mse=True)

# configs/sdxl_adapter/sdxl_qwen_vit_resampler_l4_q64_*.yaml
OFFICIAL_DETOKENIZER_RESAMPLER = dict(dim=1024, depth=4, dim_head=64, heads=16, num_queries=64,
                                      embedding_dim=4096, output1_dim=768, output2_dim=1280,
                                      ff_mult=4, normalize=False)

# stable-diffusion-xl-base-1.0 component configs (diffusers names).
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
SDXL_VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
    "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 0.13025, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SDXL_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
    "trained_betas": None, "use_karras_sigmas": False,
}


@dataclass
class SeedXConfig:
    """Sizes of every component of one SEED-X stack (defaults: the released SEED-X-17B).

    ``base_resolution`` is the side of one any-res view (the ViT's input); ``resolution_grids``
    the candidate ``"COLSxROWS"`` grids; ``num_img_tokens`` the LLM slots per view (the input
    resampler's ``grid_size**2``). ``image_size`` is the de-tokenizer's output side (SDXL: 1024).
    """

    base_resolution: int = 448
    resolution_grids: list[str] = field(default_factory=lambda: list(OFFICIAL_RESOLUTION_GRIDS))
    num_img_tokens: int = 64
    vit: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_VIT))
    llm: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_LLM))
    input_resampler: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_INPUT_RESAMPLER))
    output_resampler: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_OUTPUT_RESAMPLER))
    agent: dict[str, Any] = field(default_factory=lambda: dict(OFFICIAL_AGENT))
    detokenizer_resampler: dict[str, Any] = field(
        default_factory=lambda: dict(OFFICIAL_DETOKENIZER_RESAMPLER))
    unet: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SDXL_UNET))
    vae: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SDXL_VAE))
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SDXL_SCHEDULER))
    image_size: int = 1024

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail early, with the numbers, when the components cannot be chained."""
        problems = []
        if self.input_resampler["grid_size"] ** 2 != self.num_img_tokens:
            problems.append(f"input_resampler.grid_size**2 = {self.input_resampler['grid_size'] ** 2}"
                            f" but num_img_tokens = {self.num_img_tokens}")
        if self.output_resampler["grid_size"] ** 2 != self.num_img_tokens:
            problems.append("output_resampler.grid_size**2 must equal num_img_tokens")
        if self.input_resampler["kv_dim"] != self.vit["output_dim"]:
            problems.append(f"input_resampler.kv_dim {self.input_resampler['kv_dim']} != "
                            f"vit.output_dim {self.vit['output_dim']}")
        if self.input_resampler["embed_dim"] != self.llm["hidden_size"]:
            problems.append("input_resampler.embed_dim must equal llm.hidden_size")
        if self.output_resampler["kv_dim"] != self.llm["hidden_size"]:
            problems.append("output_resampler.kv_dim must equal llm.hidden_size")
        if self.output_resampler["embed_dim"] != self.vit["output_dim"]:
            problems.append("output_resampler.embed_dim must equal vit.output_dim (regressed ViT features)")
        if self.detokenizer_resampler["embedding_dim"] != self.vit["output_dim"]:
            problems.append("detokenizer_resampler.embedding_dim must equal vit.output_dim")
        d = self.detokenizer_resampler
        if d["output1_dim"] + d["output2_dim"] != self.unet["cross_attention_dim"]:
            problems.append("detokenizer output1_dim + output2_dim must equal unet.cross_attention_dim")
        if self.vit["image_size"] != self.base_resolution:
            problems.append(f"vit.image_size {self.vit['image_size']} != base_resolution {self.base_resolution}")
        if problems:
            raise ValueError("inconsistent SeedXConfig:\n  " + "\n  ".join(problems))

    # --- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        """Written whole or not at all: a tree's ``seedx_config.json`` is what sizes it."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SeedXConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SeedXConfig fields: {unknown}")
        base = cls()
        merged = {}
        for name in known:
            default = getattr(base, name)
            value = data.get(name, default)
            if isinstance(default, dict) and isinstance(value, dict):
                value = {**default, **value}  # a partial component dict overrides official sizes
            merged[name] = value
        return cls(**merged)

    @classmethod
    def load(cls, path: str | Path) -> "SeedXConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # --- presets ---------------------------------------------------------------------------
    @classmethod
    def official(cls) -> "SeedXConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "SeedXConfig":
        """A random-weight stack small enough for unit tests on 2 CPU cores.

        It keeps the official structure (448 px views, 8 grids, 64 tokens per view, a 1330-token
        vocabulary laid out like the real one) and the golden fixtures' tiny widths.
        """
        return cls.from_dict(dict(
            vit=dict(image_size=448, patch_size=14, width=64, layers=2, heads=4, mlp_ratio=4.9231,
                     n_queries=256, output_dim=256),
            llm=dict(OFFICIAL_LLM, vocab_size=1330, hidden_size=64, intermediate_size=172,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                     max_position_embeddings=4096),
            input_resampler=dict(grid_size=8, embed_dim=64, num_heads=4, kv_dim=256),
            output_resampler=dict(grid_size=8, embed_dim=256, num_heads=4, kv_dim=64),
            detokenizer_resampler=dict(dim=64, depth=2, dim_head=16, heads=4, num_queries=64,
                                       embedding_dim=256, output1_dim=24, output2_dim=40,
                                       ff_mult=4, normalize=False),
            unet=dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                      block_out_channels=[32, 64],
                      down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                      up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
                      cross_attention_dim=64, attention_head_dim=[2, 4], use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=8,
                      projection_class_embeddings_input_dim=88,
                      transformer_layers_per_block=[1, 2], norm_num_groups=8),
            vae=dict(block_out_channels=[16, 32], in_channels=3, out_channels=3,
                     down_block_types=["DownEncoderBlock2D"] * 2,
                     up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                     sample_size=32, norm_num_groups=8, scaling_factor=0.13025, force_upcast=True),
            image_size=32,
        ))
