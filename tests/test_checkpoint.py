"""Checkpoint machinery on synthetic checkpoints: streaming memory, errors, converter, buffers.

The release files themselves (and their golden numbers) are exercised in test_release_tree.py;
here every failure mode gets a small hand-made file so the error message can be checked word by
word, and the peak-memory bound of the streamed loader is measured in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core_models import checkpoint as ckpt
from core_models.checkpoint import (CheckpointError, CheckpointMismatchError, SeedXPaths,
                                    convert_to_safetensors, empty_init, iter_checkpoint_shards,
                                    load_into_model, load_state_dict_file, writing)

REPO = Path(__file__).resolve().parents[1]


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def save_sharded_bin(state: dict[str, torch.Tensor], folder: Path, n: int) -> None:
    """The HF / release pickle layout: ``pytorch_model-0000k-of-0000n.bin`` + index json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(state)
    weight_map = {}
    for i in range(n):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = keys[i::n]
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return mlp()


# --- streaming: peak host memory --------------------------------------------------------------
MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from torch import nn
    from core_models.checkpoint import empty_init, load_into_model

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    n_layers, path = int(sys.argv[1]), sys.argv[2]
    with empty_init():
        model = nn.ModuleList(nn.Linear(2048, 1024, bias=False) for _ in range(n_layers))
    try:  # reset the high-water mark so it covers the load only
        open("/proc/self/clear_refs", "w").write("5")
        reset = True
    except OSError:  # fall back to the lifetime peak: an upper bound, so the test stays valid
        reset = False
    before = rss("VmRSS:")
    load_into_model(model, path, torch.bfloat16, "cpu", progress=False)
    peak = rss("VmHWM:") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ok = all(p.dtype == torch.bfloat16 and p.device.type == "cpu" for p in model.parameters())
    print(json.dumps({"increase": peak - before, "ok": ok, "reset": reset}))
""")


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_streamed_load_peak_memory(tmp_path, fmt):
    """8 shards of 32 MB fp32 loaded as bf16: the peak grows by about the model, not the checkpoint.

    A non-streamed load would hold every shard (256 MB) plus the model (128 MB). The bound
    allows the model, two shards (the one being read and its transient casts) and slack for the
    allocator and accelerate's bookkeeping.
    """
    n_shards, per_shard = 8, 4  # 4 Linear(2048 -> 1024) fp32 weights = 32 MiB per shard
    folder = tmp_path / "ckpt"
    folder.mkdir()
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    for s in range(n_shards):
        shard = {f"{s * per_shard + i}.weight": torch.randn(1024, 2048, generator=gen)
                 for i in range(per_shard)}
        name = (f"pytorch_model-{s + 1:05d}-of-{n_shards:05d}.bin" if fmt == "bin"
                else f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors")
        (torch.save if fmt == "bin" else save_file)(shard, str(folder / name))
        weight_map.update({k: name for k in shard})
        del shard
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (folder / index).write_text(json.dumps({"weight_map": weight_map}))

    shard_bytes = per_shard * 1024 * 2048 * 4
    total_fp32 = n_shards * shard_bytes
    model_bytes = total_fp32 // 2
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(n_shards * per_shard), str(folder)],
                            capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["ok"]
    bound = model_bytes + 2 * shard_bytes + 48 * 2**20
    naive = total_fp32 + model_bytes
    print(f"peak RSS increase {probe['increase'] / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB")
    assert probe["increase"] < bound, (probe, bound)
    assert bound < 0.7 * naive  # the bound itself is far below loading everything at once


# --- reading files: clear errors --------------------------------------------------------------
def test_missing_file_and_missing_shard(tmp_path, reference):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.bin")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        ckpt.list_shards(tmp_path)
    save_sharded_bin(reference.state_dict(), tmp_path / "llm", 2)
    (tmp_path / "llm" / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(CheckpointError, match=r"lists shard files that do not exist.*00002-of-00002"):
        list(iter_checkpoint_shards(tmp_path / "llm"))


def test_missing_release_components_are_listed_with_search_paths(tmp_path):
    paths = SeedXPaths.resolve(tmp_path, "seed_x_edit")
    with pytest.raises(CheckpointError) as err:
        paths.require("llm", "agent", "detokenizer_stage2")
    msg = str(err.value)
    for where in ("seed_x_edit/llm", "seed-x-17b-edit/llm", "seed_x_edit/agent",
                  "seed_detokenizer/second_stage", "seed-x-17b-de-tokenizer/second_stage"):
        assert where in msg, (where, msg)
    assert "  tokenizer:" not in msg and "  vit:" not in msg  # only what was asked for


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_truncated_file_names_the_file(tmp_path, reference, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, path) if suffix == ".bin" else save_file(state, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(CheckpointError, match=rf"weights{suffix}.*truncated or corrupt"):
        load_state_dict_file(path)


class Payload:
    """Unpickling this would run arbitrary code (here: create a marker file)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_refused_by_weights_only_is_never_loaded_unsafely(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.zeros(2), "extra": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights_only=True.*refuses") as err:
        load_state_dict_file(path)
    assert "pytorch_model.bin" in str(err.value) and "not loaded unsafely" in str(err.value)
    assert not marker.exists()


# --- key checks -------------------------------------------------------------------------------
def test_shape_mismatch_lists_key_and_both_shapes(tmp_path, reference):
    save_sharded_bin(reference.state_dict(), tmp_path / "m", 2)
    with empty_init():
        wrong = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))
    with pytest.raises(CheckpointMismatchError) as err:
        load_into_model(wrong, tmp_path / "m", torch.float32, "cpu", progress=False)
    msg = str(err.value)
    assert "0.weight: checkpoint [16, 8] vs model [12, 8]" in msg
    assert "2.weight: checkpoint [4, 16] vs model [4, 12]" in msg
    assert {m[0] for m in err.value.mismatched} == {"0.weight", "0.bias", "2.weight"}


def test_missing_and_unexpected_keys_are_listed_together(tmp_path, reference):
    state = reference.state_dict()
    state["2.extra"] = torch.zeros(3)
    del state["0.bias"]
    save_sharded_bin(state, tmp_path / "m", 2)
    with empty_init():
        model = mlp()
    with pytest.raises(CheckpointMismatchError) as err:
        load_into_model(model, tmp_path / "m", torch.float32, "cpu", progress=False)
    assert err.value.missing == ["0.bias"] and err.value.unexpected == ["2.extra"]
    assert "missing keys (1):\n    0.bias" in str(err.value)
    assert "unexpected keys (1):\n    2.extra" in str(err.value)


def test_expected_keys_restrict_a_file_to_its_own_set(reference):
    """A partial file (like the stage-1 overlay) is checked against its own keys only."""
    with empty_init():
        model = mlp()
    model[0].weight = nn.Parameter(torch.zeros(16, 8))
    model[0].bias = nn.Parameter(torch.zeros(16))
    overlay = {k: v for k, v in reference.state_dict().items() if k.startswith("2.")}
    load_into_model(model, overlay, torch.float32, "cpu", expected_keys=overlay, progress=False)
    assert torch.equal(model[2].weight, reference[2].weight) and not model[0].weight.any()
    with pytest.raises(CheckpointMismatchError, match="unexpected keys"):
        load_into_model(model, reference.state_dict(), torch.float32, "cpu",
                        expected_keys=overlay, progress=False)


# --- streaming into a meta model ----------------------------------------------------------------
def test_sharded_bin_streams_into_meta_model_in_target_dtype(tmp_path, reference):
    save_sharded_bin(reference.state_dict(), tmp_path / "m", 3)
    with empty_init():
        model = mlp()
    report = load_into_model(model, tmp_path / "m", torch.bfloat16, "cpu", progress=False)
    assert len(report.files) == 3 and sorted(report.loaded) == sorted(reference.state_dict())
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16 and isinstance(param, nn.Parameter)
        torch.testing.assert_close(param.float(), reference.get_parameter(name), atol=1e-2, rtol=1e-2)


def tiny_llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, rope_theta=500.0,
                       tie_word_embeddings=False)


@pytest.mark.parametrize("build_on", ["empty_init", "meta_device"])
def test_llama_rotary_inv_freq_is_correct_after_meta_load(tmp_path, build_on):
    """Non-persistent ``inv_freq`` is never in a checkpoint: it must be real after loading, and
    stale ``rotary_emb.inv_freq`` keys of transformers <= 4.30 checkpoints are ignored."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    reference = LlamaForCausalLM(tiny_llama_config()).eval()
    state = dict(reference.state_dict())
    for i in range(2):  # what a 4.30 checkpoint carries, deliberately wrong values
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.full((4,), 123.0)
    save_sharded_bin(state, tmp_path / "llm", 2)

    if build_on == "empty_init":
        with empty_init():
            model = LlamaForCausalLM(tiny_llama_config())
    else:
        with torch.device("meta"):
            model = LlamaForCausalLM(tiny_llama_config())
        assert model.model.rotary_emb.inv_freq.device.type == "meta"
    report = load_into_model(model, tmp_path / "llm", torch.float32, "cpu", progress=False)
    assert sorted(report.ignored) == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]
    rotary, expected = model.model.rotary_emb, reference.model.rotary_emb
    assert rotary.inv_freq.dtype == torch.float32
    torch.testing.assert_close(rotary.inv_freq, expected.inv_freq, atol=0, rtol=0)
    torch.testing.assert_close(rotary.original_inv_freq, expected.original_inv_freq, atol=0, rtol=0)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids).logits, reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_tied_weights_are_loaded_once_and_stay_tied(tmp_path):
    from transformers import LlamaForCausalLM

    config = tiny_llama_config()
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config)
    state = {k: v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    with empty_init():
        model = LlamaForCausalLM(config)
    load_into_model(model, state, torch.float32, "cpu", progress=False)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model.lm_head.weight, reference.lm_head.weight, atol=0, rtol=0)


def test_device_map_with_disk_offload(tmp_path, reference):
    save_sharded_bin(reference.state_dict(), tmp_path / "m", 2)
    with empty_init():
        model = mlp()
    load_into_model(model, tmp_path / "m", torch.float32, {"0": "cpu", "1": "cpu", "2": "disk"},
                    offload_folder=tmp_path / "offload", progress=False)
    assert model[0].weight.device.type == "cpu"
    assert (tmp_path / "offload" / "index.json").is_file()
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-6, rtol=1e-6)
    with empty_init():
        model = mlp()
    with pytest.raises(ValueError, match="offload_folder"):
        load_into_model(model, tmp_path / "m", torch.float32, {"": "disk"}, progress=False)


def test_incomplete_model_is_reported(reference):
    with empty_init():
        model = mlp()
    partial = {k: v for k, v in reference.state_dict().items() if k.startswith("0.")}
    with pytest.raises(CheckpointError, match=r"never given values.*2\.weight"):
        load_into_model(model, partial, torch.float32, "cpu", expected_keys=partial, progress=False)


# --- converter --------------------------------------------------------------------------------
def test_converter_round_trip_with_index_and_dtype(tmp_path, reference):
    src = tmp_path / "llm"
    save_sharded_bin(reference.state_dict(), src, 2)
    (src / "config.json").write_text('{"model_type": "llama"}')
    out = convert_to_safetensors(src, tmp_path / "out", max_shard_size=600, progress=False)
    assert out.name == "model.safetensors.index.json"
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(shards) >= 2 and all("-of-" in s for s in shards)
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "llama"}'
    assert not list((tmp_path / "out").glob(".*"))  # no temp folder left behind
    with empty_init():
        model = mlp()
    load_into_model(model, tmp_path / "out", torch.float32, "cpu", progress=False)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0)

    single = convert_to_safetensors(src / "pytorch_model.bin.index.json", tmp_path / "half",
                                    dtype=torch.float16, progress=False)
    assert single.name == "model.safetensors"
    assert all(t.dtype == torch.float16 for t in load_file(str(single)).values())


def test_converter_in_place_is_preferred_by_the_loader(tmp_path, reference):
    src = tmp_path / "agent"
    src.mkdir()
    torch.save(reference.state_dict(), src / "pytorch_model.bin")
    assert ckpt.find_weights(src).name == "pytorch_model.bin"
    convert_to_safetensors(src, src, progress=False)
    assert ckpt.find_weights(src).name == "model.safetensors"


def test_interrupted_conversion_leaves_nothing_that_looks_complete(tmp_path, reference, monkeypatch):
    src = tmp_path / "llm"
    save_sharded_bin(reference.state_dict(), src, 2)
    real_save, calls = writing._save_shard, []

    def crash_on_second_shard(tensors, path, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash mid-conversion")
        real_save(tensors, path, metadata)

    monkeypatch.setattr(writing, "_save_shard", crash_on_second_shard)
    dst = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert_to_safetensors(src, dst, max_shard_size=300, progress=False)
    assert len(calls) == 2
    assert sorted(p.name for p in dst.iterdir()) == []  # no shard, no index, no temp folder
    assert ckpt.find_weights(dst) is None
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        ckpt.list_shards(dst)



def test_shards_are_planned_greedily_in_key_order():
    sizes = [("a", 2), ("b", 2), ("c", 10), ("d", 1), ("e", 1)]
    assert writing.plan_shards(sizes, 5) == [["a", "b"], ["c"], ["d", "e"]]
    assert writing.plan_shards([], 5) == []


def test_resaving_over_an_older_checkpoint_leaves_only_the_new_one(tmp_path, reference):
    folder = tmp_path / "llm"
    state = reference.state_dict()
    ckpt.save_state_dict({k: v * 0 for k, v in state.items()}, folder, max_shard_size=100, progress=False)
    assert len(ckpt.list_shards(folder)) > 2
    save_file({"stale": torch.zeros(1)}, str(folder / "model.safetensors"))  # an old single file
    index = ckpt.save_state_dict(state, folder, max_shard_size=300, progress=False)
    assert index.name == "model.safetensors.index.json"
    assert not (folder / "model.safetensors").exists()
    report = load_into_model(mlp(), folder, torch.float32, "cpu", progress=False)
    assert report.files == ckpt.list_shards(folder)
    loaded = {k: v for _, sd in iter_checkpoint_shards(folder) for k, v in sd.items()}
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def test_a_lone_shard_is_never_taken_for_a_whole_checkpoint(tmp_path):
    """What a hard kill mid-write could leave: one shard of several, without its index."""
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model-00001-of-00003.safetensors"))
    assert ckpt.find_weights(tmp_path) is None


def test_a_safetensors_checkpoint_is_not_converted_in_place(tmp_path, reference):
    ckpt.save_state_dict(reference.state_dict(), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="in place would overwrite"):
        convert_to_safetensors(tmp_path, tmp_path, dtype=torch.float16, progress=False)
    assert ckpt.find_weights(tmp_path).name == "model.safetensors"


# --- the agent file's optional llm.* tensors --------------------------------------------------
@pytest.fixture
def tiny_agent_parts():
    llm = dict(vocab_size=400, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)
    return dict(llm=llm, input_resampler=dict(grid_size=8, embed_dim=64, num_heads=4, kv_dim=32),
                output_resampler=dict(grid_size=8, embed_dim=32, num_heads=4, kv_dim=64))


def write_agent_tree(tmp_path: Path, agent: nn.Module, agent_file_state: dict) -> tuple[Path, Path]:
    from transformers import LlamaConfig

    llm_dir, agent_dir = tmp_path / "llm", tmp_path / "agent"
    state = agent.state_dict()
    save_sharded_bin({k[4:]: v for k, v in state.items() if k.startswith("llm.")}, llm_dir, 2)
    agent.llm.config.to_json_file(llm_dir / "config.json")
    agent_dir.mkdir()
    torch.save(agent_file_state, agent_dir / "pytorch_model.bin")
    assert isinstance(agent.llm.config, LlamaConfig)
    return llm_dir, agent_dir


def test_agent_file_plain_llm_keys_override_the_llm_folder(tmp_path, tiny_agent_parts):
    from core_models.stack import build_agent, load_agent

    torch.manual_seed(0)
    agent = build_agent(**tiny_agent_parts)
    own = {k: v for k, v in agent.state_dict().items() if not k.startswith("llm.")}
    new_norm = torch.full((64,), 0.5)
    llm_dir, agent_dir = write_agent_tree(tmp_path, agent, {**own, "llm.model.norm.weight": new_norm})
    with pytest.warns(UserWarning, match="carries 1 llm.* tensors; they override"):
        loaded = load_agent(llm_dir, agent_dir, dtype=torch.float32, progress=False,
                            **{k: v for k, v in tiny_agent_parts.items() if k != "llm"})
    assert torch.equal(loaded.llm.model.norm.weight, new_norm)
    assert torch.equal(loaded.patch_pos_embed, agent.patch_pos_embed)
    assert torch.equal(loaded.llm.model.layers[1].mlp.up_proj.weight, agent.llm.model.layers[1].mlp.up_proj.weight)


@pytest.mark.parametrize("naming", ["peft>=0.7", "peft0.4", "no_base_weights"])
def test_agent_file_peft_lora_dump_is_merged(tmp_path, tiny_agent_parts, naming):
    """A LoRA training dump (``llm.base_model.model.*``) in the agent file merges to what peft's
    own ``merge_and_unload`` gives, for peft's current naming and the 0.4 naming SEED-X used."""
    from peft import LoraConfig, get_peft_model

    from core_models.stack import build_agent, load_agent

    torch.manual_seed(0)
    agent = build_agent(**tiny_agent_parts)
    base_state = {k: v.clone() for k, v in agent.state_dict().items()}
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                         "gate_proj", "up_proj", "down_proj"],
                      modules_to_save=["input_layernorm", "post_attention_layernorm", "norm"])
    peft_llm = get_peft_model(agent.llm, lora)
    with torch.no_grad():
        for name, param in peft_llm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.copy_(torch.randn_like(param) * 0.1 + (1.0 if "norm" in name else 0.0))
    dump = {"llm." + k: v.clone() for k, v in peft_llm.state_dict().items()}
    dump.update({k: v for k, v in base_state.items() if not k.startswith("llm.")})
    if naming == "peft0.4":
        dump = {k.replace(".base_layer.", "."): v for k, v in dump.items()}
    if naming == "no_base_weights":
        dump = {k: v for k, v in dump.items() if ".base_layer." not in k}
    merged = {"llm." + k: v for k, v in peft_llm.merge_and_unload().state_dict().items()}

    llm_dir, agent_dir = write_agent_tree(tmp_path, build_agent(**tiny_agent_parts), {})
    save_sharded_bin({k[4:]: v for k, v in base_state.items() if k.startswith("llm.")}, llm_dir, 2)
    torch.save(dump, agent_dir / "pytorch_model.bin")
    with pytest.warns(UserWarning, match="peft LoRA training dump: merging 14 LoRA pairs"):
        loaded = load_agent(llm_dir, agent_dir, dtype=torch.float32, lora_scaling=8 / 4, progress=False,
                            **{k: v for k, v in tiny_agent_parts.items() if k != "llm"})
    state = loaded.state_dict()
    for key, value in merged.items():
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=1e-6, msg=key)
