"""SEED-X Nano: the sizes of a SEED-X small enough to train on 2 CPU cores in a few hours.

The Nano is an ordinary `SeedXConfig`: the same classes (`VisionTransformerWithAttnPool`,
`Resampler`, `ContinuousLVLM` on a stock HF Llama, `ResamplerXLV2`, `SDXLAdapter` /
`SDXLAdapterWithLatentImage` on diffusers' `UNet2DConditionModel`, `AutoencoderKL` and
`EulerDiscreteScheduler`) and the same code paths as the 17B release, only narrower.

Scale mapping (official -> Nano):

* any-res views 448 px -> 64 px, with the official 8 grids (so every grid occurs for the world's
  48-256 px images with aspect ratios up to 4:1);
* ViT: patch 14 / 32x32 patches / 256 queries -> patch 8 / 8x8 patches / 64 queries (one query per
  8x8 pixel cell), width 128, 4 layers, output_dim 128;
* LLM slots per view 64 -> 16 (``vit_down`` pools 64 ViT tokens by 4, exactly as 256 -> 64);
* Llama-2-13B -> hidden 256, 4 layers, 4 heads, vocab = the Nano tokenizer;
* ``ResamplerXLV2`` 1024 wide -> 128 wide, 16 queries, prompt_embeds 64 + 64 = 128 wide;
* SDXL UNet -> a 3-level latent UNet (32, 64, 128) with cross-attention only at 8x8 and 4x4;
* SDXL VAE (f=8) -> an f=4 AutoencoderKL: 64x64 images <-> 16x16x4 latents.

The VAE's ``scaling_factor`` is measured after the VAE stage (1 / std of the latents) and
written into the exported ``seedx_config.json``; `nano_config(scaling_factor=...)` builds it.

The tokenizer: the bundled ``tiny_tokenizer`` (a toy 1000-piece model) was measured on the world's
text and needs about 2.5 pieces per word ("triangle" is 5 pieces, "Generate an image: a yellow
square on the bottom." 22). So the Nano trains its own SentencePiece BPE model on the text of the
first 2000 training examples (deterministic: fixed text, one thread, no shuffling; 600 pieces
with Llama's <unk>/<s>/</s> = 0/1/2 and byte fallback), about 1.1-1.4 pieces per word, then
appends the 330 SEED-X added tokens in the official order (ids 600..929), so
`SeedXTokenizer.from_pretrained` reads it like the release's folder. See ``seedx_nano.train.data.train_tokenizer``.
"""

from __future__ import annotations

from core_models.config import OFFICIAL_AGENT, OFFICIAL_LLM, OFFICIAL_RESOLUTION_GRIDS, SDXL_SCHEDULER, SeedXConfig

NANO_VOCAB_SIZE = 930  # 600 SentencePiece pieces + 330 SEED-X added tokens
NANO_RESOLUTION = 64
NANO_TOKENS_PER_VIEW = 16
DEFAULT_SCALING_FACTOR = 1.0

NANO_VIT = dict(image_size=NANO_RESOLUTION, patch_size=8, width=128, layers=4, heads=4,
                mlp_ratio=4.0, n_queries=64, output_dim=128)

NANO_LLM = dict(OFFICIAL_LLM, vocab_size=NANO_VOCAB_SIZE, hidden_size=256, intermediate_size=688,
                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                max_position_embeddings=1024)

NANO_DETOKENIZER_RESAMPLER = dict(dim=128, depth=2, dim_head=32, heads=4, num_queries=16,
                                  embedding_dim=128, output1_dim=64, output2_dim=64, ff_mult=2,
                                  normalize=False)

NANO_UNET = dict(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=[32, 64, 128],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    mid_block_type="UNetMidBlock2DCrossAttn",
    cross_attention_dim=128, attention_head_dim=[1, 2, 4], use_linear_projection=True,
    transformer_layers_per_block=[1, 1, 1], addition_embed_type="text_time",
    addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 64,
    norm_num_groups=16,
)

NANO_VAE = dict(block_out_channels=[32, 64, 64], in_channels=3, out_channels=3,
                down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, layers_per_block=1,
                sample_size=NANO_RESOLUTION, norm_num_groups=16, scaling_factor=DEFAULT_SCALING_FACTOR,
                force_upcast=True)


def nano_config(scaling_factor: float | None = None, vocab_size: int = NANO_VOCAB_SIZE) -> SeedXConfig:
    """The SEED-X Nano `SeedXConfig`.

    ``scaling_factor``: the trained VAE's latent scale, when known; ``vocab_size``: the Nano
    tokenizer's size (pieces + 330 added tokens).
    """
    vae = dict(NANO_VAE)
    if scaling_factor is not None:
        vae["scaling_factor"] = float(scaling_factor)
    return SeedXConfig.from_dict(dict(
        base_resolution=NANO_RESOLUTION,
        resolution_grids=list(OFFICIAL_RESOLUTION_GRIDS),
        num_img_tokens=NANO_TOKENS_PER_VIEW,
        vit=dict(NANO_VIT),
        llm=dict(NANO_LLM, vocab_size=vocab_size),
        input_resampler=dict(grid_size=4, embed_dim=256, num_heads=4, kv_dim=128),
        output_resampler=dict(grid_size=4, embed_dim=128, num_heads=4, kv_dim=256),
        agent=dict(OFFICIAL_AGENT),
        detokenizer_resampler=dict(NANO_DETOKENIZER_RESAMPLER),
        unet=dict(NANO_UNET),
        vae=vae,
        scheduler=dict(SDXL_SCHEDULER),
        image_size=NANO_RESOLUTION,
    ))
