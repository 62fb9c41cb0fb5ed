"""A miniature SEED-X-17B release, built from the golden weights, read by the public loaders.

The tree uses the exact release file names (``seed_x_i/llm/pytorch_model-0000k-of-00002.bin`` +
``pytorch_model.bin.index.json`` + a transformers-4.30-style ``config.json`` with stale
``rotary_emb.inv_freq`` keys, ``seed_x_i/agent/pytorch_model.bin``, ``Qwen-VL-Chat`` shards with
``transformer.visual.*`` beside unrelated language-model keys, the tokenizer folder, a diffusers
``stable-diffusion-xl-base-1.0`` with a tiny random UNet/VAE, and the *partial* stage-1 overlay
holding only ``resampler.*`` and the UNet's to_k/to_v). Loading it must reproduce the golden
outputs recorded with the official code.

The golden ViT (output 256) and golden MLLM (resampler kv_dim 32) are not dimensionally chained,
so no single ``SeedXConfig`` describes this tree: each component is loaded through its public
per-component loader (``load_vit``, ``load_agent``, ``load_detokenizer``) with paths resolved by
``SeedXPaths`` - the same functions ``SeedXStack.from_pretrained`` calls. The whole stack path is
covered by the tiny-stack round trip at the end (``save_pretrained`` -> ``from_pretrained``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core_models import checkpoint as ckpt
from core_models.checkpoint import CheckpointError, SeedXPaths, convert_to_safetensors, reading
from core_models.stack import SeedXStack, load_agent, load_detokenizer, load_vit

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
TOL = dict(atol=1e-4, rtol=1e-4)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def save_sharded(state: dict, folder: Path, n: int, prefix: str = "pytorch_model") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    keys, weight_map = list(state), {}
    for i in range(n):
        name = f"{prefix}-{i + 1:05d}-of-{n:05d}.bin"
        part = keys[i * len(keys) // n:(i + 1) * len(keys) // n]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / f"{prefix}.bin.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))


def tiny_unet_and_vae(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cfg = read_json(GOLDEN / "resampler" / "config.json")["adapter_sdxl_conditioning"]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["tiny_unet_config_used_for_capture"])
    vae = AutoencoderKL(**cfg["tiny_vae_config_used_for_capture"])
    return unet, vae


def is_to_kv(key: str) -> bool:
    return key.rsplit(".", 2)[-2] in ("to_k", "to_v")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("release")
    gen = torch.Generator().manual_seed(7)

    # seed_x_i/llm: release-style config.json (transformers 4.30.2: no rope_theta) + 2 pickled shards
    mllm = load_file(str(GOLDEN / "mllm" / "weights.safetensors"))
    llm_cfg = read_json(GOLDEN / "mllm" / "config.json")["llm"]["config"]
    llm_state = {k[len("llm."):]: v for k, v in mllm.items() if k.startswith("llm.")}
    for i in range(llm_cfg["num_hidden_layers"]):
        llm_state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.full((8,), 3.0)
    save_sharded(llm_state, root / "seed_x_i" / "llm", 2)
    release_cfg = {k: v for k, v in llm_cfg.items() if k != "rope_theta"}
    release_cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", pretraining_tp=2,
                       rope_scaling=None, torch_dtype="float32", transformers_version="4.30.2",
                       initializer_range=0.02, use_cache=True,
                       _name_or_path="meta-llama/Llama-2-13b-chat-hf")
    (root / "seed_x_i" / "llm" / "config.json").write_text(json.dumps(release_cfg, indent=2))
    (root / "seed_x_i" / "agent").mkdir()
    torch.save({k: v for k, v in mllm.items() if not k.startswith("llm.")},
               root / "seed_x_i" / "agent" / "pytorch_model.bin")

    # Qwen-VL-Chat: the ViT under transformer.visual. spread over 2 of 3 shards, plus LM keys
    vit = load_file(str(GOLDEN / "vit" / "weights.safetensors"))
    visual = {f"transformer.visual.{k}": v for k, v in vit.items()}
    names = list(visual)
    shards = [dict(list(visual.items())[: len(names) // 2]), dict(list(visual.items())[len(names) // 2:]), {}]
    for i, shard in enumerate(shards):
        shard[f"transformer.h.{i}.attn.c_attn.weight"] = torch.randn(12, 4, generator=gen)
    shards[2]["lm_head.weight"] = torch.randn(10, 4, generator=gen)
    qwen, weight_map = root / "Qwen-VL-Chat", {}
    qwen.mkdir()
    for i, shard in enumerate(shards):
        name = f"pytorch_model-{i + 1:05d}-of-00003.bin"
        torch.save({k: v.to(torch.bfloat16) if "visual" not in k else v for k, v in shard.items()}, qwen / name)
        weight_map.update({k: name for k in shard})
    (qwen / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))

    shutil.copytree(FIXTURES / "golden_tokenizer", root / ckpt.TOKENIZER_DIRNAME,
                    ignore=shutil.ignore_patterns("README.md", "cases.json"))

    # stable-diffusion-xl-base-1.0 (diffusers format) and the partial stage-1 overlay
    from diffusers import EulerDiscreteScheduler

    base_unet, vae = tiny_unet_and_vae(seed=0)
    sdxl = root / ckpt.SDXL_DIRNAME
    base_unet.save_pretrained(sdxl / "unet")
    vae.save_pretrained(sdxl / "vae")
    EulerDiscreteScheduler(**read_json(GOLDEN / "resampler" / "config.json")
                           ["adapter_sdxl_conditioning"]["scheduler_config"]).save_config(sdxl / "scheduler")
    tuned_unet, _ = tiny_unet_and_vae(seed=1)
    resampler = load_file(str(GOLDEN / "resampler" / "detok_resampler_weights.safetensors"))
    stage1 = {f"resampler.{k}": v for k, v in resampler.items()}
    stage1.update({f"unet.{k}": v for k, v in tuned_unet.state_dict().items() if is_to_kv(k)})
    (root / "seed_detokenizer" / "first_stage").mkdir(parents=True)
    torch.save(stage1, root / "seed_detokenizer" / "first_stage" / "pytorch_model.bin")

    # stage 2: the full adapter with an 8-channel conv_in
    from core_models.detokenizer import SDXLAdapterWithLatentImage
    from core_models.detokenizer_resampler import ResamplerXLV2

    stage2_unet, _ = tiny_unet_and_vae(seed=2)
    resampler_args = detok_resampler_args()
    adapter2 = SDXLAdapterWithLatentImage(stage2_unet, ResamplerXLV2(**resampler_args))
    (root / "seed_detokenizer" / "second_stage").mkdir(parents=True)
    torch.save(adapter2.state_dict(), root / "seed_detokenizer" / "second_stage" / "pytorch_model.bin")
    return root


@pytest.fixture(scope="module")
def paths(tree) -> SeedXPaths:
    return SeedXPaths.resolve(tree, "seed_x_i").require("llm", "agent", "tokenizer", "vit", "sdxl",
                                                          "detokenizer_stage1", "detokenizer_stage2")


def vit_args() -> dict:
    return read_json(GOLDEN / "vit" / "config.json")["constructor_args"]


def detok_resampler_args() -> dict:
    return read_json(GOLDEN / "resampler" / "config.json")["detokenizer_resampler"]["constructor_args"]


# --- paths ------------------------------------------------------------------------------------
def test_release_layout_resolves(tree, paths):
    assert paths.llm == tree / "seed_x_i" / "llm"
    assert paths.agent == tree / "seed_x_i" / "agent"
    assert paths.vit == tree / "Qwen-VL-Chat" and paths.vit_is_qwen_vl_chat
    assert paths.tokenizer == tree / ckpt.TOKENIZER_DIRNAME
    assert paths.detokenizer_stage1 == tree / "seed_detokenizer" / "first_stage"
    assert ckpt.list_shards(paths.llm) == [paths.llm / f"pytorch_model-0000{i}-of-00002.bin" for i in (1, 2)]


def test_split_repo_layout_resolves(tree, tmp_path):
    """The per-model repos: seed-x-17b-instruct/{agent,llm,tokenizer}, seed-x-17b-de-tokenizer/."""
    for src, dst in [("seed_x_i/llm", "seed-x-17b-instruct/llm"), ("seed_x_i/agent", "seed-x-17b-instruct/agent"),
                     (ckpt.TOKENIZER_DIRNAME, f"seed-x-17b-instruct/{ckpt.TOKENIZER_DIRNAME}"),
                     ("seed_detokenizer/first_stage", "seed-x-17b-de-tokenizer/first_stage")]:
        (tmp_path / dst).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / dst).symlink_to(tree / src)
    paths = SeedXPaths.resolve(tmp_path, "seed_x_i", vit=tree / "Qwen-VL-Chat")
    paths.require("llm", "agent", "tokenizer", "vit", "detokenizer_stage1")
    assert paths.llm == tmp_path / "seed-x-17b-instruct" / "llm"
    assert paths.detokenizer_stage1 == tmp_path / "seed-x-17b-de-tokenizer" / "first_stage"
    inside = SeedXPaths.resolve(tmp_path / "seed-x-17b-instruct", "seed_x_i")
    assert inside.agent == tmp_path / "seed-x-17b-instruct" / "agent"
    with pytest.raises(CheckpointError, match=r"sdxl: not found; looked for:\n.*stable-diffusion-xl-base-1.0"):
        paths.require("sdxl")


# --- the ViT from Qwen-VL-Chat shards (and from qwen_vit_G.pt) --------------------------------------
@pytest.fixture(scope="module")
def vit_io():
    return load_file(str(GOLDEN / "vit" / "input.safetensors")), load_file(str(GOLDEN / "vit" / "output.safetensors"))


def test_vit_from_qwen_vl_chat_shards_reproduces_golden(paths, vit_io, monkeypatch):
    opened = []
    real = reading.load_state_dict_file
    monkeypatch.setattr(reading, "load_state_dict_file", lambda p, **kw: opened.append(Path(p).name) or real(p, **kw))
    vit = load_vit(paths.vit, vit=vit_args(), dtype=torch.float32, progress=False)
    assert "pytorch_model-00003-of-00003.bin" not in opened  # no transformer.visual.* there: never read
    inputs, outputs = vit_io
    with torch.no_grad():
        torch.testing.assert_close(vit(inputs["pixel_values"]), outputs["output"], **TOL)


def test_vit_from_extracted_qwen_vit_g_pt(paths, vit_io, tmp_path):
    """``reload_qwen_vit.py``'s output (prefix stripped) converted from the shards by our converter
    with ``qwen_visual_key_map`` - no Qwen remote code - and saved back as ``qwen_vit_G.pt``."""
    out = convert_to_safetensors(paths.vit, tmp_path / "QwenViT", key_map=ckpt.qwen_visual_key_map,
                                 base_name="qwen_vit_G", copy_other_files=False, progress=False)
    assert out.name == "qwen_vit_G.safetensors"
    torch.save(load_file(str(out)), tmp_path / "QwenViT" / "qwen_vit_G.pt")
    out.unlink()
    resolved = SeedXPaths.resolve(tmp_path, "seed_x_i")
    assert resolved.vit == tmp_path / "QwenViT" / "qwen_vit_G.pt" and not resolved.vit_is_qwen_vl_chat
    vit = load_vit(resolved.vit, vit=vit_args(), dtype=torch.float32, progress=False)
    inputs, outputs = vit_io
    with torch.no_grad():
        torch.testing.assert_close(vit(inputs["pixel_values_224"]), outputs["output_224"], **TOL)


# --- the agent: llm folder + agent file ---------------------------------------------------------
def mllm_parts() -> dict:
    cfg = read_json(GOLDEN / "mllm" / "config.json")
    return dict(input_resampler=cfg["input_resampler"]["args"], output_resampler=cfg["output_resampler"]["args"],
                agent=cfg["agent"]["args"])


@pytest.fixture(scope="module")
def agent(paths):
    return load_agent(paths.llm, paths.agent, dtype=torch.float32, progress=False, **mllm_parts())


def test_agent_reproduces_golden_forward(agent):
    inputs = load_file(str(GOLDEN / "mllm" / "forward_inputs.safetensors"))
    expected = load_file(str(GOLDEN / "mllm" / "forward_outputs.safetensors"))
    with torch.no_grad():
        out = agent(**inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(out["logits"][real], expected["logits"][real], **TOL)
    torch.testing.assert_close(out["recon_image_embeds"], expected["recon_image_embeds"], **TOL)


def test_agent_config_comes_from_the_llm_folder_and_rotary_is_recomputed(agent):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = agent.llm.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers) == (400, 64, 2)
    fresh = LlamaRotaryEmbedding(LlamaConfig(**read_json(GOLDEN / "mllm" / "config.json")["llm"]["config"]))
    rotary = agent.llm.model.rotary_emb
    torch.testing.assert_close(rotary.inv_freq, fresh.inv_freq, atol=0, rtol=0)  # not the stale 3.0s
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in agent.parameters())


def test_agent_in_bf16_with_auto_dtype_policy(paths):
    agent = load_agent(paths.llm, paths.agent, dtype=torch.bfloat16, progress=False, **mllm_parts())
    assert {p.dtype for p in agent.parameters()} == {torch.bfloat16}
    assert agent.llm.model.rotary_emb.inv_freq.dtype == torch.float32  # buffers keep float32


def test_agent_file_with_a_foreign_key_is_rejected(paths, tmp_path):
    state = dict(torch.load(paths.agent / "pytorch_model.bin", weights_only=True))
    state["input_resampler.query"] = state["input_resampler.query"][:, :10]
    del state["patch_pos_embed"]
    state["vision_tower.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(ckpt.CheckpointMismatchError) as err:
        load_agent(paths.llm, tmp_path, dtype=torch.float32, progress=False, **mllm_parts())
    msg = str(err.value)
    assert "pytorch_model.bin" in msg and "patch_pos_embed" in msg and "vision_tower.weight" in msg
    assert "input_resampler.query: checkpoint [64, 10] vs model [64, 64]" in msg


# --- the de-tokenizer: SDXL base + stage-1 overlay; stage 2 whole --------------------------------
def test_stage1_overlay_replaces_only_to_k_to_v_and_reproduces_golden_resampler(paths):
    resampler_args = detok_resampler_args()
    adapter = load_detokenizer(1, paths.detokenizer_stage1, sdxl_dir=paths.sdxl,
                               detokenizer_resampler=resampler_args, dtype=torch.float32, progress=False)
    io = load_file(str(GOLDEN / "resampler" / "detok_resampler_io.safetensors"))
    with torch.no_grad():
        prompt, pooled = adapter.resampler(io["x_64tok"])
    torch.testing.assert_close(prompt, io["prompt_embeds_64tok"], **TOL)
    torch.testing.assert_close(pooled, io["pooled_64tok"], **TOL)

    base, _ = tiny_unet_and_vae(seed=0)
    tuned, _ = tiny_unet_and_vae(seed=1)
    base_state, tuned_state = base.state_dict(), tuned.state_dict()
    replaced = 0
    for key, value in adapter.unet.state_dict().items():
        source = tuned_state if is_to_kv(key) else base_state
        torch.testing.assert_close(value, source[key], atol=0, rtol=0, msg=key)
        replaced += is_to_kv(key)
    assert replaced == 8 * 2 * 2  # 8 transformer blocks x attn1/attn2 x to_k/to_v


def test_stage1_file_with_extra_unet_keys_is_rejected(paths, tmp_path):
    """Each file is checked against its own key set: the stage-1 file holds no other UNet key."""
    state = dict(torch.load(paths.detokenizer_stage1 / "pytorch_model.bin", weights_only=True))
    state["unet.conv_in.weight"] = torch.zeros(32, 4, 3, 3)
    torch.save(state, tmp_path / "pytorch_model.bin")
    resampler_args = detok_resampler_args()
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"unexpected keys \(1\):\n    unet.conv_in.weight"):
        load_detokenizer(1, tmp_path, sdxl_dir=paths.sdxl, detokenizer_resampler=resampler_args,
                         dtype=torch.float32, progress=False)


def test_stage2_loads_whole_adapter_with_8_channel_conv_in(paths):
    resampler_args = detok_resampler_args()
    adapter = load_detokenizer(2, paths.detokenizer_stage2, sdxl_dir=paths.sdxl,
                               detokenizer_resampler=resampler_args, dtype=torch.float32, progress=False)
    saved = torch.load(paths.detokenizer_stage2 / "pytorch_model.bin", weights_only=True)
    assert adapter.unet.conv_in.weight.shape == (32, 8, 3, 3) and adapter.unet.config.in_channels == 8
    for key, value in adapter.state_dict().items():
        torch.testing.assert_close(value, saved[key], atol=0, rtol=0, msg=key)


# --- conversion to safetensors, then the same loaders -------------------------------------------
def test_converted_release_loads_identically(tree, tmp_path, agent):
    converted = tmp_path / "release"
    shutil.copytree(tree, converted)
    for folder in ("seed_x_i/llm", "seed_x_i/agent", "seed_detokenizer/first_stage"):
        convert_to_safetensors(converted / folder, converted / folder, max_shard_size=100_000, progress=False)
        for old in (converted / folder).glob("pytorch_model*"):
            old.unlink()  # only the safetensors remain: nothing is unpickled any more
    paths = SeedXPaths.resolve(converted, "seed_x_i")
    assert ckpt.find_weights(paths.llm).name == "model.safetensors.index.json"
    reloaded = load_agent(paths.llm, paths.agent, dtype=torch.float32, progress=False, **mllm_parts())
    for key, value in agent.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, atol=0, rtol=0, msg=key)


# --- the whole stack: tiny config round trip ---------------------------------------------------
def test_tiny_stack_round_trips_through_the_release_loader(tmp_path, caplog):
    from core_models.config import SeedXConfig

    stack = SeedXStack.from_config(SeedXConfig.tiny(), seed=3)
    assert stack._detokenizers == {}  # de-tokenizers are lazy
    stack.save_pretrained(tmp_path / "tiny", max_shard_size=1_000_000)
    assert (tmp_path / "tiny" / "seed_x_i" / "llm" / "model.safetensors.index.json").is_file()
    stage1_keys = ckpt.checkpoint_keys(tmp_path / "tiny" / "seed_detokenizer" / "first_stage")
    assert all(k.startswith("resampler.") or is_to_kv(k) for k in stage1_keys)

    with caplog.at_level("WARNING", logger="core_models.stack"):
        loaded = SeedXStack.from_pretrained(tmp_path / "tiny", progress=False)
    assert "bfloat16" in caplog.text  # no dtype given: bf16, and it says so
    assert {p.dtype for p in loaded.agent.parameters()} == {torch.bfloat16}
    assert loaded.config == stack.config and len(loaded.tokenizer) == len(stack.tokenizer)

    exact = SeedXStack.from_pretrained(tmp_path / "tiny", dtype=torch.float32, progress=False)
    for name in ("vit", "agent"):
        ref, got = getattr(stack, name).state_dict(), getattr(exact, name).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name
    assert exact._detokenizers == {}
    for stage in (1, 2):
        ref, got = stack.detokenizer(stage).state_dict(), exact.detokenizer(stage).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), stage
    assert exact.detokenizer(1).vae is exact.vae and exact.detokenizer(1).vit is exact.vit


def test_custom_size_tree_without_seedx_config_needs_its_config(tmp_path):
    """A tree of non-official sizes that lost its ``seedx_config.json`` cannot be sized from its
    files (the ViT and resampler sizes are recorded nowhere else): the error names both ways out,
    and ``config=`` loads it, for planning (`config_from_paths`) as for loading."""
    from core_models.config import SeedXConfig
    from core_models.stack import config_from_paths

    tiny = SeedXConfig.tiny().to_dict()
    cfg = SeedXConfig.from_dict({
        **tiny, "llm": {**tiny["llm"], "hidden_size": 96, "intermediate_size": 256},
        "input_resampler": {**tiny["input_resampler"], "embed_dim": 96},
        "output_resampler": {**tiny["output_resampler"], "kv_dim": 96}})
    stack = SeedXStack.from_config(cfg, seed=5)
    root = stack.save_pretrained(tmp_path / "custom", stages=(1,))
    (root / "seedx_config.json").unlink()

    with pytest.raises(ValueError, match="inconsistent SeedXConfig") as err:
        SeedXStack.from_pretrained(root, dtype=torch.float32, progress=False)
    message = str(err.value)
    assert "config=" in message and "seedx_config.json" in message
    assert "Runtime.from_pretrained" in message and "SeedXStack.from_pretrained" in message

    assert config_from_paths(SeedXPaths.resolve(root, "seed_x_i"), config=cfg) is cfg
    loaded = SeedXStack.from_pretrained(root, dtype=torch.float32, progress=False, config=cfg)
    assert loaded.config == cfg
    for name in ("vit", "agent"):
        ref, got = getattr(stack, name).state_dict(), getattr(loaded, name).state_dict()
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), name
    ref, got = stack.detokenizer(1).state_dict(), loaded.detokenizer(1).state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_runtime_loads_a_custom_size_tree_with_config(tmp_path):
    """``Runtime.from_pretrained(tree, config=cfg)``: the same tree through the runtime, also
    when the placement must plan the LLM's device map from the sizes (offload)."""
    from core_models.config import SeedXConfig
    from seedx_agent.runtime import Runtime

    tiny = SeedXConfig.tiny().to_dict()
    cfg = SeedXConfig.from_dict({
        **tiny, "llm": {**tiny["llm"], "hidden_size": 96, "intermediate_size": 256},
        "input_resampler": {**tiny["input_resampler"], "embed_dim": 96},
        "output_resampler": {**tiny["output_resampler"], "kv_dim": 96}})
    root = SeedXStack.from_config(cfg, seed=5).save_pretrained(tmp_path / "custom", stages=(1,))
    (root / "seedx_config.json").unlink()
    with pytest.raises(ValueError, match=r"config=.*seedx_config\.json|seedx_config\.json.*config="):
        Runtime.from_pretrained(root, dtype=torch.float32, load_plugins=False)
    runtime = Runtime.from_pretrained(root, config=cfg, dtype=torch.float32, load_plugins=False)
    assert runtime.config == cfg and runtime.stack.agent.llm.config.hidden_size == 96
    done = runtime.open_session().ask("Hello.", max_new_tokens=3)
    assert done.ok and done.finish_reason == "max_new_tokens"
