"""Full-size checkpoint manifests through the loader's own per-file key rules.

The module trees themselves are checked against the manifests by their authors (test_qwen_vit,
test_mllm, test_detokenizer, test_resampler). This file covers what only the *loader* decides,
at full size and for all three variants: which key set each release file must match, what is
ignored (``rotary_emb.inv_freq``, Qwen-VL-Chat's language model), how a peft LoRA training dump
maps onto dense names, and that the configs derived from release-style files are the official
ones. Everything runs on key/shape tables or the ``meta`` device: no memory, no weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core_models import checkpoint as ckpt
from core_models.config import (OFFICIAL_AGENT, OFFICIAL_INPUT_RESAMPLER, OFFICIAL_LLM,
                                OFFICIAL_OUTPUT_RESAMPLER, OFFICIAL_VIT, SeedXConfig)

MANIFESTS = Path(__file__).parent / "fixtures" / "golden" / "manifests"
VARIANTS = ("seed_x", "seed_x_i", "seed_x_edit")


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v[0]) for k, v in json.loads((MANIFESTS / name).read_text()).items()}


@pytest.fixture(scope="module")
def full_agent() -> dict[str, tuple[int, ...]]:
    from core_models.stack import build_agent

    with torch.device("meta"):
        agent = build_agent(OFFICIAL_LLM, OFFICIAL_INPUT_RESAMPLER, OFFICIAL_OUTPUT_RESAMPLER, OFFICIAL_AGENT)
    return {k: tuple(v.shape) for k, v in agent.state_dict().items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_llm_folder_check_ignores_optional_inv_freq(full_agent, variant):
    """``llm/`` is checked against the agent's ``llm.*`` keys, with transformers-4.30 inv_freq ignored."""
    found = {**shapes(f"{variant}/llm_hf.json"), **shapes(f"{variant}/llm_hf_optional_inv_freq.json")}
    expected = {k: s for k, s in full_agent.items() if k.startswith("llm.")}
    plan = ckpt.check_state_dict_keys(found, expected, f"{variant}/llm", ckpt.prefix_key_map("llm."))
    assert len(plan) == len(expected) == 363
    assert all(ckpt.is_ignored_key(k) for k in shapes(f"{variant}/llm_hf_optional_inv_freq.json"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_agent_file_is_exactly_its_own_key_set(full_agent, variant):
    own = {k: s for k, s in full_agent.items() if not k.startswith("llm.")}
    plan = ckpt.check_state_dict_keys(shapes(f"{variant}/agent_pytorch_model.json"), own, f"{variant}/agent")
    assert len(plan) == 23
    with pytest.raises(ckpt.CheckpointMismatchError, match="unexpected keys"):  # the llm is not the agent file's
        ckpt.check_state_dict_keys({**shapes(f"{variant}/agent_pytorch_model.json"),
                                    "llm.model.norm.weight": (5120,)}, own, "agent")


@pytest.mark.parametrize("variant", VARIANTS)
def test_lora_training_dump_maps_onto_the_dense_agent(full_agent, variant):
    """The peft-0.4 dump (560 LoRA tensors, RMSNorms as modules_to_save) becomes exactly the dense
    ``ContinuousLVLM`` state: every LoRA target merged at its base shape, frozen copies dropped."""
    dump = shapes(f"{variant}/agent_training_dump_lora_peft040.json")
    plan, dropped = ckpt.plan_peft_merge(dump)
    assert set(plan) == set(full_agent)
    merges = {k: r for k, r in plan.items() if r[0] == "merge"}
    assert len(merges) == 7 * 40 and all(r[1] is not None for r in merges.values())
    for key, recipe in plan.items():
        if recipe[0] == "copy":
            assert dump[recipe[1]] == full_agent[key], key
        else:
            _, base, a, b = recipe
            assert dump[base] == (dump[b][0], dump[a][1]) == full_agent[key], key
    assert sum(".original_module." in k for k in dropped) == 2 * 40 + 1
    assert sum(ckpt.is_ignored_key(k) for k in dropped) == 40


def test_qwen_vl_chat_prefix_rule_gives_the_vit_file(tmp_path):
    """``transformer.visual.*`` kept and stripped, the rest of Qwen-VL-Chat ignored."""
    from core_models.qwen_vit import VisionTransformerWithAttnPool

    vit_manifest = shapes("qwen_vit_G_448.json")
    found = {ckpt.QWEN_VISUAL_PREFIX + k: s for k, s in vit_manifest.items()}
    found.update({"transformer.wte.weight": (151936, 4096), "transformer.h.0.attn.c_attn.weight": (12288, 4096),
                  "lm_head.weight": (151936, 4096)})
    with torch.device("meta"):
        vit = VisionTransformerWithAttnPool(**OFFICIAL_VIT)
    expected = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    plan = ckpt.check_state_dict_keys(found, expected, "Qwen-VL-Chat", ckpt.qwen_visual_key_map)
    assert len(plan) == len(vit_manifest) == 594


def test_configs_derived_from_release_files_are_official(tmp_path):
    """The release's transformers-4.30.2 ``llm/config.json`` and SDXL-base's diffusers configs
    give exactly the official ``SeedXConfig``."""
    from core_models.stack import config_from_paths

    llm = tmp_path / "seed_x_i" / "llm"
    llm.mkdir(parents=True)
    (llm / "config.json").write_text(json.dumps({
        "_name_or_path": "meta-llama/Llama-2-13b-chat-hf", "architectures": ["LlamaForCausalLM"],
        "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 5120,
        "initializer_range": 0.02, "intermediate_size": 13824, "max_position_embeddings": 2048,
        "model_type": "llama", "num_attention_heads": 40, "num_hidden_layers": 40,
        "num_key_value_heads": 40, "pad_token_id": 0, "pretraining_tp": 2, "rms_norm_eps": 1e-05,
        "rope_scaling": None, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.30.2", "use_cache": True, "vocab_size": 32330}))
    sdxl_cfg = json.loads((Path(__file__).parent / "fixtures" / "sdxl_base_configs.json").read_text())
    sdxl = tmp_path / ckpt.SDXL_DIRNAME
    for part, name in (("unet", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        (sdxl / part).mkdir(parents=True)
        (sdxl / part / name).write_text(json.dumps({**sdxl_cfg[part], "_diffusers_version": "0.19.0.dev0"}))
    paths = ckpt.SeedXPaths(root=tmp_path, variant="seed_x_i", llm=llm, sdxl=sdxl)
    assert config_from_paths(paths) == SeedXConfig.official()
