"""``seedx convert extract-adapters``: released variants rewritten as peft adapters on one base.

The test tree is a random release at tiny sizes whose variants are what a merged LoRA fine-tune
leaves, and not only that: every linear layer = base + a rank-8 difference + small noise, one
linear changed at full rank, the last few hundred embedding rows replaced, lm_head changed at
rank 8, norms changed, the input resampler and ``patch_pos_embed`` changed; the variant LLMs are
pickled shards with an index, as released. The extraction must find rank 8 everywhere, keep
exactly the full-rank linear and the norms whole, report the noise level as residual, and the
real runtime (peft loading, per-turn switching) must give each variant's own logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core_models import checkpoint as ckpt
from core_models.checkpoint import adapter_extraction as ax
from core_models.checkpoint import reading

VARIANTS = ("seed_x_i", "seed_x_edit")
NOISE = 3e-3            # noise / low-rank difference, in Frobenius norm
EDITED_ROWS = 300       # the last rows of the embedding that a variant replaces
FULL_RANK = {"seed_x_i": "model.layers.1.mlp.down_proj", "seed_x_edit": "model.layers.0.self_attn.v_proj"}
NORMS = ("model.layers.0.input_layernorm", "model.norm")
LOGITS_TOL = dict(atol=2e-3, rtol=1e-2)


def tiny_config(hidden: int = 64, intermediate: int = 172, layers: int = 2, heads: int = 4):
    from core_models.config import SeedXConfig

    cfg = SeedXConfig.tiny().to_dict()
    cfg["llm"].update(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads)
    cfg["input_resampler"]["embed_dim"] = hidden
    cfg["output_resampler"]["kv_dim"] = hidden
    return SeedXConfig.from_dict(cfg)


def save_pickled_shards(state: dict, folder: Path, n: int = 2) -> None:
    """The release's LLM format: ``pytorch_model-0000k-of-0000n.bin`` + index json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys, weight_map = list(state), {}
    for i in range(n):
        name = f"pytorch_model-{i + 1:05d}-of-{n:05d}.bin"
        part = keys[i * len(keys) // n:(i + 1) * len(keys) // n]
        torch.save({k: state[k].clone() for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))


def low_rank(m: int, n: int, rank: int, scale: float, gen) -> torch.Tensor:
    d = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
    return d * (scale / d.norm())


def variant_of(base: dict, gen, *, full_rank: str | None, edited_rows: int = EDITED_ROWS) -> dict:
    """What a merged rank-8 LoRA fine-tune with trainable norms and embeddings leaves."""
    out = {}
    for key, w in base.items():
        module = key.rsplit(".", 1)[0]
        if ".layers." in key and w.ndim == 2:
            scale = 0.05 * float(w.norm())
            if module == full_rank:
                delta = torch.randn(w.shape, generator=gen) * (scale / w.numel() ** 0.5)
            else:
                delta = low_rank(*w.shape, 8, scale, gen)
                delta += torch.randn(w.shape, generator=gen) * (NOISE * scale / w.numel() ** 0.5)
            out[key] = w + delta
        elif key == "model.embed_tokens.weight":
            out[key] = w.clone()
            out[key][-edited_rows:] = torch.randn(edited_rows, w.shape[1], generator=gen) * 0.02
        elif key == "lm_head.weight":
            out[key] = w + low_rank(*w.shape, 8, 0.05 * float(w.norm()), gen)
        elif module in NORMS:
            out[key] = w + 0.1 * torch.randn(w.shape, generator=gen)
        else:
            out[key] = w.clone()
    return out


def release_tree(root: Path, config, *, agent_keys=lambda k: k.startswith("input_resampler.")
                 or k == "patch_pos_embed", full_rank: dict | None = None) -> Path:
    """``seed_x/`` (safetensors, as `save_pretrained` writes) and its variants (pickled shards)."""
    from core_models.stack import SeedXStack

    torch.manual_seed(0)
    stack = SeedXStack.from_config(config, seed=0)
    stack.save_pretrained(root, variant="seed_x", dtype=torch.float32, stages=())
    base_llm = {k: v for k, v in ckpt.CheckpointView(root / "seed_x" / "llm").items()}
    base_agent = dict(ckpt.CheckpointView(root / "seed_x" / "agent").items())
    for i, name in enumerate(VARIANTS):
        gen = torch.Generator().manual_seed(10 + i)
        llm = variant_of(base_llm, gen, full_rank=(full_rank or {}).get(name))
        save_pickled_shards(llm, root / name / "llm")
        shutil.copy(root / "seed_x" / "llm" / "config.json", root / name / "llm" / "config.json")
        agent = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if agent_keys(k) else v
                 for k, v in base_agent.items()}
        (root / name / "agent").mkdir(parents=True)
        torch.save(agent, root / name / "agent" / "pytorch_model.bin")
    return root


@pytest.fixture(scope="module")
def threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, threads) -> Path:
    return release_tree(tmp_path_factory.mktemp("release") / "tree", tiny_config(),
                        full_rank=FULL_RANK)


@pytest.fixture(scope="module")
def extracted(tree):
    """The tree after ``seedx convert extract-adapters TREE`` (the CLI, end to end)."""
    from click.testing import CliRunner

    from seedx_agent.cli import cli

    result = CliRunner().invoke(cli, ["convert", "extract-adapters", str(tree)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return tree, result.output


def reports(tree: Path) -> dict[str, dict]:
    return {v: json.loads((tree / "adapters" / v / ax.REPORT_NAME).read_text()) for v in VARIANTS}


# --- the per-tensor decisions ---------------------------------------------------------------------
def test_ranks_dense_fallbacks_and_residuals(extracted):
    tree, output = extracted
    for variant, report in reports(tree).items():
        by_kind: dict[str, list[dict]] = {}
        for t in report["tensors"]:
            by_kind.setdefault(t["kind"], []).append(t)
        lora = {t["module"]: t for t in by_kind["lora"]}
        # every attention / MLP projection but the full-rank ones, and lm_head: rank 8. The
        # other variant's full-rank module is kept whole here too: peft cannot host one
        # adapter's LoRA on a module another adapter keeps whole
        other = FULL_RANK[next(v for v in VARIANTS if v != variant)]
        expected_lora = {f"model.layers.{i}.{p}" for i in range(2) for p in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")} - set(FULL_RANK.values()) | {"lm_head"}
        assert set(lora) == expected_lora
        assert {t["rank"] for t in lora.values()} == {8}
        # the residual is the noise left outside rank 8 (a bit under NOISE: 8 of 64 directions
        # of the noise fall inside the kept subspace); lm_head had no noise
        layer_residuals = [t["residual"] for m, t in lora.items() if m != "lm_head"]
        assert all(0.8 * NOISE < r < 1.05 * NOISE for r in layer_residuals), layer_residuals
        assert lora["lm_head"]["residual"] < 1e-5
        dense = {t["module"]: t for t in by_kind["dense"]}
        assert sorted(dense) == sorted([*FULL_RANK.values(), *NORMS])
        assert "to match" in dense[other]["reason"] and not dense[FULL_RANK[variant]]["reason"]
        (tokens,) = by_kind["tokens"]
        assert tokens["module"] == "model.embed_tokens" and tokens["rows"] == EDITED_ROWS
        config = json.loads((tree / "adapters" / variant / "adapter_config.json").read_text())
        vocab = tokens["shape"][0]
        assert config["trainable_token_indices"] == {
            "model.embed_tokens": list(range(vocab - EDITED_ROWS, vocab))}
        assert sorted(config["modules_to_save"]) == sorted([*FULL_RANK.values(), *NORMS])
        assert config["r"] == config["lora_alpha"] == 8 and config["rank_pattern"] == {}
        assert set(report["agent_tensors"]) == {k for k in report["agent_tensors"]
                                                if k.startswith("input_resampler.")} | {"patch_pos_embed"}
        assert "patch_pos_embed" in report["agent_tensors"]
        assert report["logits"]["ok"] and report["logits"]["top1_agreement"] == 1.0
        assert report["adapter_bytes"] < report["variant_bytes"] / 2
        assert variant in output and "kept whole" in output


def test_low_rank_factors_pick_the_smallest_rank_within_tol():
    gen = torch.Generator().manual_seed(3)
    d = low_rank(300, 2000, 5, 1.0, gen)  # big enough for the randomized SVD path
    d += torch.randn(d.shape, generator=gen) * (0.02 / d.numel() ** 0.5)
    b, a, residual = ax.low_rank_factors(d, tol=0.05, max_rank=64)
    assert b.shape == (300, 5) and a.shape == (5, 2000)
    assert residual == pytest.approx(float((d - b @ a).norm() / d.norm()), rel=1e-4)
    assert 0.01 < residual < 0.05
    assert ax.low_rank_factors(d, tol=0.05, max_rank=4) is None  # rank 5 needed: dense
    assert ax.low_rank_factors(d, tol=1e-4, max_rank=64) is None  # noise is full rank


# --- peft: the same keys as its own save_pretrained, and it loads ---------------------------------
def test_adapter_has_peft_own_key_format(extracted):
    import copy

    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import LlamaForCausalLM

    tree, _ = extracted
    folder = tree / "adapters" / "seed_x_i"
    config = LoraConfig.from_pretrained(str(folder))
    ours = load_file(str(folder / ax.ADAPTER_WEIGHTS))
    base = LlamaForCausalLM(ax.llm_config(tree / "seed_x" / "llm"))
    peft_model = get_peft_model(copy.deepcopy(base), config)
    theirs = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    theirs = {f"base_model.model.{k}" if not k.startswith("base_model.") else k: v
              for k, v in theirs.items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape)
                                                           for k, v in theirs.items()}


# --- the runtime: all variants resident on one base, switched per turn ---------------------------
def dense_agent(tree: Path, variant: str):
    from core_models.stack import config_from_paths, load_agent

    paths = ckpt.SeedXPaths.resolve(tree, variant)
    cfg = config_from_paths(paths)
    return load_agent(paths.llm, paths.agent, llm=cfg.llm, input_resampler=cfg.input_resampler,
                      output_resampler=cfg.output_resampler, agent=cfg.agent,
                      dtype=torch.float32, progress=False)


def logits_and_resampler(agent, ids, images):
    with torch.no_grad():
        return agent.llm(input_ids=ids).logits, agent.input_resampler(images), agent.patch_pos_embed.clone()


@pytest.fixture(scope="module")
def probe():
    gen = torch.Generator().manual_seed(5)
    return torch.randint(0, 1330, (1, 12), generator=gen), torch.randn(1, 256, 256, generator=gen)


@pytest.fixture(scope="module")
def references(extracted, probe):
    tree, _ = extracted
    return {v: logits_and_resampler(dense_agent(tree, v), *probe) for v in ("seed_x", *VARIANTS)}


def test_the_variants_really_differ(references):
    """So that matching a variant's logits below proves its adapter is active."""
    base = references["seed_x"]
    for variant in VARIANTS:
        assert (references[variant][0] - base[0]).abs().max() > 50 * LOGITS_TOL["atol"]
        assert not torch.equal(references[variant][2], base[2])


def assert_outputs(got, want):
    torch.testing.assert_close(got[0], want[0], **LOGITS_TOL)
    assert torch.equal(got[0].argmax(-1), want[0].argmax(-1))
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], want[2], atol=0, rtol=0)


def test_runtime_hosts_every_variant_on_the_base_without_reading_dense_llms(
        extracted, probe, references, monkeypatch):
    import seedx_agent

    tree, _ = extracted
    opened = []
    real = reading.load_state_dict_file
    monkeypatch.setattr(reading, "load_state_dict_file",
                        lambda p, **kw: opened.append(Path(p)) or real(p, **kw))
    rt = seedx_agent.from_pretrained(str(tree), variant="seed_x")
    read_llms = {p.parent.parent.name for p in opened if p.parent.name == "llm"}
    assert read_llms == {"seed_x"}  # the base LLM, never a dense variant
    assert rt.describe()["adapters"] == sorted(VARIANTS)
    assert {id(rt.agent(v)) for v in (*VARIANTS, "seed_x", "base")} == {id(rt.stack.agent)}
    # switching back and forth gives each variant its own LLM logits and resamplers
    for variant in ("seed_x_i", "seed_x_edit", "seed_x", "seed_x_edit", "seed_x_i", "base"):
        want = references["seed_x" if variant == "base" else variant]
        assert_outputs(logits_and_resampler(rt.agent(variant), *probe), want)


def test_default_load_replaces_the_dense_variant_with_its_adapter(extracted, probe, references,
                                                                 monkeypatch):
    from seedx_agent.runtime import Runtime
    from seedx_agent.variants import AdapterWeights

    tree, _ = extracted
    opened = []
    real = reading.load_state_dict_file
    monkeypatch.setattr(reading, "load_state_dict_file",
                        lambda p, **kw: opened.append(Path(p)) or real(p, **kw))
    rt = Runtime.from_pretrained(tree)  # default variant seed_x_i: an adapter on seed_x
    assert {p.parent.parent.name for p in opened if p.parent.name == "llm"} == {"seed_x"}
    assert rt.variants.get("seed_x_i").llm == AdapterWeights(base="seed_x", path="adapters/seed_x_i")
    assert rt.adapters.base_variant == "seed_x" and rt.resident_variants == ["seed_x"]
    assert rt.default_variant == "seed_x_i" and rt.open_session().variant == "seed_x_i"
    for variant in ("seed_x_i", "seed_x", "seed_x_edit"):
        assert_outputs(logits_and_resampler(rt.agent(variant), *probe), references[variant])


# --- the command line -------------------------------------------------------------------------------
def test_dry_run_writes_nothing_and_errors_are_clear(tree, tmp_path, capsys):
    from seedx_agent.cli import main

    work = tmp_path / "t"
    shutil.copytree(tree, work, ignore=shutil.ignore_patterns("adapters"))
    assert main(["convert", "extract-adapters", str(work), "--variants", "seed_x_i",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "seed_x_i" in out and "skipped (dry run)" in out and not (work / "adapters").exists()

    shutil.rmtree(work / "seed_x_edit" / "llm")
    assert main(["convert", "extract-adapters", str(work), "--dry-run"]) == 2
    assert "seed_x_edit" in capsys.readouterr().err

    shutil.copytree(work / "seed_x" / "llm", work / "seed_x_edit" / "llm")
    from safetensors.torch import save_file

    st = load_file(str(work / "seed_x_edit" / "llm" / "model.safetensors"))
    st["model.norm.weight"] = torch.ones(65)
    save_file(st, str(work / "seed_x_edit" / "llm" / "model.safetensors"))
    assert main(["convert", "extract-adapters", str(work), "--variants", "seed_x_edit"]) == 2
    err = capsys.readouterr().err
    assert "model.norm.weight" in err and "[65]" in err


def test_a_failed_logits_check_exits_nonzero_and_writes_no_adapter(tree, tmp_path, capsys):
    from seedx_agent.cli import main

    work = tmp_path / "t"
    shutil.copytree(tree, work, ignore=shutil.ignore_patterns("adapters", "seed_x_edit"))
    code = main(["convert", "extract-adapters", str(work), "--variants", "seed_x_i",
                 "--tol", "0.9", "--max-rank", "8"])
    assert code == 1
    assert "does not reproduce the variant's logits" in capsys.readouterr().err
    assert ckpt_adapters(work) == []


def ckpt_adapters(root: Path) -> list[str]:
    from seedx_agent.adapters import adapter_names

    return adapter_names(root)


# --- memory: three variants for about the price of one ---------------------------------------------
def storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def agent_tensors(agent):
    return [*agent.parameters(), *agent.buffers()]


def test_three_variants_cost_little_more_than_one(tmp_path, threads):
    from seedx_agent.runtime import Runtime

    small = lambda k: k == "patch_pos_embed" or k.startswith("output_resampler.ln")  # noqa: E731
    root = release_tree(tmp_path / "big", tiny_config(hidden=1024, intermediate=2816, heads=8),
                        agent_keys=small)
    reports = ckpt.extract_adapters(root, progress=False)
    assert all(r.logits["ok"] and set(r.ranks.values()) == {8} for r in reports)
    rt = Runtime.from_pretrained(root, variant="seed_x", load_plugins=False)
    host = rt.adapters
    resident = storage_bytes(agent_tensors(rt.stack.agent) + [
        t for weights in host.agent_weights.values() for t in weights.values()]
        + list(host._base_agent_weights.values()))
    one = storage_bytes(agent_tensors(dense_agent(root, "seed_x_i")))
    ratio = resident / one
    print(f"three variants resident: {resident / 1e6:.1f} MB, one dense variant: "
          f"{one / 1e6:.1f} MB, ratio {ratio:.3f}")
    assert ratio <= 1.15


# --- the other forms: LoRA on the embedding, trainable rows of lm_head, per-module ranks ----------
def test_embedding_lora_lm_head_rows_and_rank_pattern_load_in_peft(tmp_path, threads):
    from peft import PeftModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=600, hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4)
    base = LlamaForCausalLM(config).eval()
    base.save_pretrained(tmp_path / "base")
    gen = torch.Generator().manual_seed(2)
    variant = {k: v.clone() for k, v in base.state_dict().items()}
    variant["model.embed_tokens.weight"] += low_rank(600, 48, 4, 0.3 * float(base.model.embed_tokens.weight.detach().norm()), gen)
    variant["lm_head.weight"][[3, 99, 500]] = torch.randn(3, 48, generator=gen)
    q = "model.layers.0.self_attn.q_proj.weight"
    variant[q] += low_rank(48, 48, 2, 0.3 * float(variant[q].norm()), gen)
    (tmp_path / "variant").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "variant" / "config.json")
    save_pickled_shards(variant, tmp_path / "variant")

    report = ckpt.extract_adapter(tmp_path / "base", tmp_path / "variant", tmp_path / "adapter",
                                  variant="v", base="b", progress=False)
    assert report.ranks == {"model.embed_tokens": 4, "model.layers.0.self_attn.q_proj": 2}
    assert [(t.module, t.rows) for t in report.of_kind("tokens")] == [("lm_head", 3)]
    assert report.logits["ok"] and report.dense_modules == []
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"] == {"lm_head": [3, 99, 500]}
    assert len(cfg["rank_pattern"]) == 1 and cfg["alpha_pattern"] == cfg["rank_pattern"]

    ids = ax.fixed_prompt(600, 10)
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"),
                                      str(tmp_path / "adapter")).eval()
    want = LlamaForCausalLM(config).eval()
    want.load_state_dict(variant)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, want(input_ids=ids).logits,
                                   **LOGITS_TOL)
        assert not torch.allclose(base(input_ids=ids).logits, want(input_ids=ids).logits,
                                  **LOGITS_TOL)
    # a variant that differs only in whole modules cannot be a LoRA adapter: said so, nothing left
    norm_only = {k: v.clone() for k, v in base.state_dict().items()}
    norm_only["model.norm.weight"] += 0.5
    (tmp_path / "norm_only").mkdir()
    shutil.copy(tmp_path / "base" / "config.json", tmp_path / "norm_only" / "config.json")
    save_pickled_shards(norm_only, tmp_path / "norm_only")
    with pytest.raises(ckpt.CheckpointError, match="no low-rank linear difference"):
        ckpt.extract_adapter(tmp_path / "base", tmp_path / "norm_only", tmp_path / "a2",
                             variant="v", base="b", progress=False)
    assert not (tmp_path / "a2").exists()
