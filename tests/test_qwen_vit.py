"""The Qwen-VL visual encoder against the golden fixtures (tiny ViT, official 448 px geometry)."""

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from core_models.config import OFFICIAL_VIT
from core_models.qwen_vit import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, VisionTransformerWithAttnPool,
                                  image_transform, negative_pixel_values)
from core_models.resampler import get_abs_pos

TOL = dict(atol=1e-4, rtol=1e-4)
VIT_FIXTURES = Path(__file__).parent / "fixtures" / "golden" / "vit"


@pytest.fixture(scope="module")
def vit_data():
    folder = VIT_FIXTURES
    args = json.loads((folder / "config.json").read_text())["constructor_args"]
    model = VisionTransformerWithAttnPool(**args).eval()
    model.load_state_dict(load_file(folder / "weights.safetensors"), strict=True)
    return model, load_file(folder / "input.safetensors"), load_file(folder / "output.safetensors")


def test_outputs_448_with_intermediates(vit_data):
    model, inputs, outputs = vit_data
    captured = {}
    hooks = [
        model.ln_pre.register_forward_pre_hook(lambda m, i: captured.update(ln_pre_in=i[0])),
        model.transformer.register_forward_hook(lambda m, i, o: captured.update(transformer=o)),
        model.attn_pool.register_forward_hook(lambda m, i, o: captured.update(attn_pool=o)),
    ]
    try:
        with torch.no_grad():
            out = model(inputs["pixel_values"])
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(out, outputs["output"], **TOL)
    torch.testing.assert_close(captured["ln_pre_in"][:1], outputs["sample0_after_patch_embed_plus_pos"], **TOL)
    torch.testing.assert_close(captured["transformer"].permute(1, 0, 2)[:1],
                               outputs["sample0_after_transformer"], **TOL)
    torch.testing.assert_close(captured["attn_pool"], outputs["after_attn_pool"], **TOL)


def test_positional_table_interpolation(vit_data):
    model, _, outputs = vit_data
    interp = get_abs_pos(model.positional_embedding.detach(), 1024)
    torch.testing.assert_close(interp, outputs["interp_pos_embed_1024"], atol=0, rtol=0)


def test_outputs_224_no_interpolation(vit_data):
    model, inputs, outputs = vit_data
    with torch.no_grad():
        torch.testing.assert_close(model(inputs["pixel_values_224"]), outputs["output_224"], **TOL)


def test_negative_image(vit_data):
    model, _, outputs = vit_data
    pixels = negative_pixel_values(448)
    assert pixels.shape == (1, 3, 448, 448) and not pixels.any()
    with torch.no_grad():
        torch.testing.assert_close(model(pixels), outputs["output_zeros448"], **TOL)


def test_preprocessing_matches_official(vit_data):
    _, inputs, _ = vit_data
    image = Image.fromarray(inputs["source_image_uint8_hwc"].numpy())  # 320x240 RGB
    pixels = image_transform(image, image_size=448)
    assert pixels.shape == (1, 3, 448, 448) and pixels.dtype == torch.float32
    torch.testing.assert_close(pixels[0], inputs["pixel_values"][0], atol=1e-6, rtol=0)


def test_preprocessing_conventions():
    grey = Image.new("RGB", (448, 448), tuple(round(m * 255) for m in OPENAI_CLIP_MEAN))
    rgba = Image.new("RGBA", (10, 30), (255, 0, 0, 7))
    batch = image_transform([grey, rgba], image_size=448)
    assert batch.shape == (2, 3, 448, 448)
    assert batch[0].abs().max() < 0.5 / 255 / min(OPENAI_CLIP_STD)  # mean colour ~ zero tensor
    expected_red = torch.tensor([(1 - m) / s if c == 0 else -m / s
                                 for c, (m, s) in enumerate(zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))])
    torch.testing.assert_close(batch[1, :, 200, 100], expected_red)


def test_bf16_forward_runs(vit_data):
    model, inputs, outputs = vit_data
    model16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        out = model16(inputs["pixel_values"][:1])  # fp32 pixels are cast to the weights' dtype
    assert out.dtype == torch.bfloat16 and out.shape == (1, 256, 256)
    # The README measured ~3.6e-2 bf16 drift on this tiny ViT (outputs up to 3.8).
    assert (out.float() - outputs["output"][:1]).abs().max() < 0.1


def test_patch_pos_option():
    """Upstream's optional ViT-side patch position term (off in all released configs)."""
    torch.manual_seed(0)
    args = dict(image_size=28, patch_size=14, width=32, layers=1, heads=2, mlp_ratio=2.0,
                n_queries=4, output_dim=128)
    plain = VisionTransformerWithAttnPool(**args).eval()
    with_pos = VisionTransformerWithAttnPool(**args, patch_pos=True).eval()
    assert set(with_pos.state_dict()) - set(plain.state_dict()) == {"patch_pos_embed"}
    with_pos.load_state_dict({**plain.state_dict(), "patch_pos_embed": with_pos.patch_pos_embed.data})
    x = torch.randn(2, 3, 28, 28)
    with pytest.raises(ValueError):
        with_pos(x)
    with torch.no_grad():
        with_pos.patch_pos_embed.zero_()
        torch.testing.assert_close(with_pos(x, torch.rand(2, 2)), plain(x))


def test_official_manifest_on_meta(golden):
    manifest = json.loads((golden / "manifests" / "qwen_vit_G_448.json").read_text())
    with torch.device("meta"):
        model = VisionTransformerWithAttnPool(**OFFICIAL_VIT)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: shape for k, (shape, _dtype) in manifest.items()}
    assert sum(v.numel() for v in model.state_dict().values()) == 1935610624
