"""The shared Qwen-VL ``Resampler`` (MLLM input/output) and the de-tokenizer's ``ResamplerXLV2``."""

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from core_models.config import OFFICIAL_DETOKENIZER_RESAMPLER
from core_models.detokenizer_resampler import ResamplerXLV2
from core_models.resampler import Resampler

TOL = dict(atol=1e-4, rtol=1e-4)
GOLDEN = Path(__file__).parent / "fixtures" / "golden"
FOLDER = GOLDEN / "resampler"
CONFIG = json.loads((FOLDER / "config.json").read_text())


def _qwen_resampler(name: str) -> Resampler:
    model = Resampler(**CONFIG[name]["constructor_args"]).eval()
    model.load_state_dict(load_file(FOLDER / f"{name}_weights.safetensors"), strict=True)
    return model


def _detok(normalize: bool = False) -> ResamplerXLV2:
    args = {**CONFIG["detokenizer_resampler"]["constructor_args"], "normalize": normalize}
    model = ResamplerXLV2(**args).eval()
    model.load_state_dict(load_file(FOLDER / "detok_resampler_weights.safetensors"), strict=True)
    return model


@pytest.fixture(scope="module")
def detok_io():
    return load_file(FOLDER / "detok_resampler_io.safetensors")


# --- MLLM input / output resamplers (default LayerNorm eps 1e-5) ---------------------------------

@pytest.mark.parametrize("tokens", ["256tok", "64tok"])
def test_input_resampler(tokens):
    io = load_file(FOLDER / "input_resampler_io.safetensors")
    with torch.no_grad():
        y = _qwen_resampler("input_resampler")(io[f"x_{tokens}"])
    torch.testing.assert_close(y, io[f"y_{tokens}"], **TOL)


def test_output_resampler():
    io = load_file(FOLDER / "output_resampler_io.safetensors")
    with torch.no_grad():
        y = _qwen_resampler("output_resampler")(io["x"])
    torch.testing.assert_close(y, io["y"], **TOL)


def test_layernorm_eps_is_part_of_the_fixture():
    """The 1e-6 eps of the ViT's attention pool must *not* be used for the MLLM resamplers."""
    io = load_file(FOLDER / "input_resampler_io.safetensors")
    model = Resampler(**CONFIG["input_resampler"]["constructor_args"],
                      norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    model.load_state_dict(load_file(FOLDER / "input_resampler_weights.safetensors"), strict=True)
    assert model.ln_q.eps == 1e-6
    with torch.no_grad():
        assert not torch.equal(model(io["x_64tok"]), io["y_64tok"])


# --- de-tokenizer resampler ---------------------------------------------------------------------

@pytest.mark.parametrize("tokens", ["64tok", "256tok"])
def test_detokenizer_resampler(detok_io, tokens):
    with torch.no_grad():
        prompt_embeds, pooled = _detok()(detok_io[f"x_{tokens}"])
    torch.testing.assert_close(prompt_embeds, detok_io[f"prompt_embeds_{tokens}"], **TOL)
    torch.testing.assert_close(pooled, detok_io[f"pooled_{tokens}"], **TOL)


def test_detokenizer_resampler_normalize_true_quirk(detok_io):
    with torch.no_grad():
        prompt_embeds, pooled = _detok(normalize=True)(detok_io["x_64tok"])
    torch.testing.assert_close(prompt_embeds, detok_io["prompt_embeds_64tok_normalize_true"], **TOL)
    torch.testing.assert_close(pooled, detok_io["pooled_64tok_normalize_true"], **TOL)


def test_detokenizer_negative_from_vit_zeros(detok_io):
    """CFG negative: ViT(all-zero normalised image) -> avg-pool tokens by 4 -> resampler."""
    vit_zeros = load_file(GOLDEN / "vit" / "output.safetensors")["output_zeros448"]
    pooled_tokens = F.avg_pool1d(vit_zeros.transpose(1, 2), kernel_size=4, stride=4).transpose(1, 2)
    torch.testing.assert_close(pooled_tokens, detok_io["neg_vit_down_feat"], **TOL)
    with torch.no_grad():
        prompt_embeds, pooled = _detok()(detok_io["neg_vit_down_feat"])
    torch.testing.assert_close(prompt_embeds, detok_io["neg_prompt_embeds"], **TOL)
    torch.testing.assert_close(pooled, detok_io["neg_pooled"], **TOL)


def test_vit_features_chain_into_detokenizer():
    """The image-reconstruction path feeds the raw 256 ViT tokens (no vit_down), negative too."""
    vit_out = load_file(GOLDEN / "vit" / "output.safetensors")
    adapter = load_file(FOLDER / "adapter_sdxl_conditioning.safetensors")
    model = _detok()
    with torch.no_grad():
        for features, name in [(vit_out["output"][:1], "imgpil"),
                               (vit_out["output_zeros448"], "imgpil_negative")]:
            prompt_embeds, pooled = model(features)
            torch.testing.assert_close(prompt_embeds, adapter[f"{name}_prompt_embeds"], **TOL)
            torch.testing.assert_close(pooled, adapter[f"{name}_pooled"], **TOL)


def test_detokenizer_manifest_on_meta():
    manifest = json.loads((GOLDEN / "manifests" / "detokenizer_resampler_only.json").read_text())
    with torch.device("meta"):
        model = ResamplerXLV2(**OFFICIAL_DETOKENIZER_RESAMPLER)
    shapes = {f"resampler.{k}": list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: shape for k, (shape, _dtype) in manifest.items()}
