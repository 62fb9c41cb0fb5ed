"""ContinuousLVLM against the golden MLLM fixture (tiny Llama, fp32) and the full-size manifests."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core_models.config import SeedXConfig
from core_models.mllm import ContinuousLVLM

MLLM = "mllm"
GOLDEN = Path(__file__).parent / "fixtures" / "golden"


def fixture_config(golden) -> SeedXConfig:
    """The fixture's tiny stack as a SeedXConfig.

    Its input resampler reads 32-wide "ViT" features, so the (unused) ViT and de-tokenizer widths
    are set to 32 to keep the config consistent.
    """
    c = json.loads((golden / MLLM / "config.json").read_text())
    return SeedXConfig.from_dict(dict(
        vit=dict(output_dim=c["input_resampler"]["args"]["kv_dim"]),
        llm=c["llm"]["config"],
        input_resampler=c["input_resampler"]["args"],
        output_resampler=c["output_resampler"]["args"],
        agent=c["agent"]["args"],
        detokenizer_resampler=dict(embedding_dim=c["output_resampler"]["args"]["embed_dim"]),
    ))


@pytest.fixture(scope="module")
def model():
    m = ContinuousLVLM.from_config(fixture_config(GOLDEN)).eval()
    m.load_state_dict(load_file(GOLDEN / MLLM / "weights.safetensors"), strict=True)
    return m


@pytest.fixture(scope="module")
def forward_io():
    return (load_file(GOLDEN / MLLM / "forward_inputs.safetensors"),
            load_file(GOLDEN / MLLM / "forward_outputs.safetensors"))


def test_state_dict_keys_are_official(model, golden):
    keys = set(model.state_dict())
    assert keys == set(load_file(golden / MLLM / "weights.safetensors"))
    assert "patch_pos_embed" in keys and "llm.lm_head.weight" in keys
    assert model.patch_pos_embed.shape == (4, 64)


def test_forward_matches_fixture(model, forward_io):
    inputs, expected = forward_io
    with torch.no_grad():
        out = model(**inputs)
    for name in ("total_loss", "lm_loss", "rec_loss"):
        torch.testing.assert_close(out[name].reshape(1), expected[name], atol=1e-5, rtol=1e-5)
    # HF Llama honours the padding mask, the official xformers Llama does not: compare real tokens.
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out["logits"][real], expected["logits"][real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out["last_hidden_state"][real], expected["last_hidden_state"][real],
                               atol=1e-4, rtol=1e-4)
    for name in ("llm_inputs_embeds", "input_resampler_out", "output_resampler_in",
                 "recon_image_embeds", "target_embeds_vit_down"):
        torch.testing.assert_close(out[name], expected[name], atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(out["total_loss"], out["lm_loss"] + 6.0 * out["rec_loss"])


def test_embed_inputs_is_the_forward_splice(model, forward_io):
    inputs, expected = forward_io
    with torch.no_grad():
        embeds = model.embed_inputs(inputs["input_ids"], inputs["image_embeds"], inputs["patch_positions"],
                                    inputs["ids_cmp_mask"], inputs["embeds_cmp_mask"])
    torch.testing.assert_close(embeds, expected["llm_inputs_embeds"], atol=1e-5, rtol=1e-5)


def test_encode_images_patch_term(model):
    x = torch.randn(3, 256, 32)
    pos = torch.tensor([[0.25, 0.5], [0.75, 0.5], [0.5, 0.5]])
    with torch.no_grad():
        got = model.encode_images(x, pos)
        base = model.input_resampler(x)
        w = torch.cat([pos, 1 - pos], -1) / 2  # [x/2, y/2, (1-x)/2, (1-y)/2]
        expected = base + (w @ model.patch_pos_embed)[:, None]
        torch.testing.assert_close(got, expected)
        # the global view (0.5, 0.5) gets a quarter of the sum of the four rows
        torch.testing.assert_close(got[2] - base[2], (0.25 * model.patch_pos_embed.sum(0)).expand(64, -1))
        torch.testing.assert_close(model.encode_images(x, None), base)


def test_build_ids_cmp_mask(golden, forward_io):
    inputs, _ = forward_io
    mask = ContinuousLVLM.build_ids_cmp_mask(inputs["input_ids"], 170, 171, 172, 173)
    # every bracketed block: the input images (cmp) and the generated one (gen)
    assert torch.equal(mask, inputs["ids_cmp_mask"] | inputs["ids_gen_mask"])
    for case in ("comp_seedx_i_anyres", "edit_seedx_edit"):
        d = load_file(golden / MLLM / f"generate_{case}.safetensors")
        assert torch.equal(ContinuousLVLM.build_ids_cmp_mask(d["input_ids"], 170, 171, 172, 173),
                           d["input_ids_cmp_mask"])
        assert torch.equal(ContinuousLVLM.build_ids_cmp_mask(d["input_ids"][0], 170, 171, 172, 173),
                           d["input_ids_cmp_mask"][0])
    # upstream pairs sorted opens with sorted closes; an unmatched open is ignored
    ids = torch.tensor([5, 170, 9, 9, 171, 172, 9, 173, 170, 9])
    mask = ContinuousLVLM.build_ids_cmp_mask(ids, 170, 171, 172, 173)
    assert mask.nonzero().flatten().tolist() == [2, 3, 6]


def test_slot_count_mismatch_is_reported(model, golden):
    d = load_file(golden / MLLM / "generate_comp_seedx_i_anyres.safetensors")
    with pytest.raises(ValueError, match="image slot mismatch"):
        model.embed_inputs(d["input_ids"], d["input_image_embeds"][:2], d["input_patch_positions"][:2],
                           d["input_ids_cmp_mask"])
    with pytest.raises(ValueError, match="ids_cmp_mask"):
        model.embed_inputs(d["input_ids"], d["input_image_embeds"], d["input_patch_positions"])


def test_forward_without_images_keeps_params_in_graph(model, forward_io):
    inputs, _ = forward_io
    ids, labels = inputs["input_ids"][:1, :40], inputs["input_ids"][:1, :40].clone()
    out = model(ids, torch.ones_like(ids), labels)
    assert out["rec_loss"].item() == 0.0
    torch.testing.assert_close(out["total_loss"], out["lm_loss"])
    out["total_loss"].backward()
    try:  # the zero-weighted path reaches every trainable parameter (DDP / ZeRO need that)
        assert model.output_resampler.query.grad is not None
        assert model.input_resampler.query.grad is not None and model.patch_pos_embed.grad is not None
        assert float(model.output_resampler.query.grad.abs().max()) == 0.0
    finally:
        model.zero_grad(set_to_none=True)


def test_training_backward_reaches_both_resamplers(model, forward_io):
    inputs, _ = forward_io
    try:
        model(**inputs)["total_loss"].backward()
        assert float(model.output_resampler.query.grad.abs().sum()) > 0
        assert float(model.input_resampler.kv_proj.weight.grad.abs().sum()) > 0
        assert float(model.patch_pos_embed.grad.abs().sum()) > 0
    finally:
        model.zero_grad(set_to_none=True)


def _shapes(manifest: dict) -> dict:
    return {k: tuple(v[0]) for k, v in manifest.items()}


def test_full_size_matches_manifests_on_meta(golden):
    with torch.device("meta"):
        full = ContinuousLVLM.from_config(SeedXConfig.official(), dtype=torch.bfloat16)
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in full.parameters())
    state = {k: tuple(v.shape) for k, v in full.state_dict().items()}
    llm = {k[len("llm."):]: s for k, s in state.items() if k.startswith("llm.")}
    agent = {k: s for k, s in state.items() if not k.startswith("llm.")}
    manifests = golden / "manifests" / "seed_x"
    assert llm == _shapes(json.loads((manifests / "llm_hf.json").read_text()))
    assert agent == _shapes(json.loads((manifests / "agent_pytorch_model.json").read_text()))
    assert len(llm) == 363 and len(agent) == 23
    assert (full.lm_loss_scale, full.rec_loss_scale, full.add_patch_pos, full.vit_down, full.mse) == (
        1.0, 6.0, True, True, True)
