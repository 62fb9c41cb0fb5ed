"""Memory profiles and ``seedx plan``: the estimate is made from shapes alone, adds up to the
checkpoint's own parameter counts, and says whether a profile fits its card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from seedx_agent.cli import main
from seedx_agent.memory_plan import GiB, manifests_dir
from seedx_agent.placement import PROFILES, Placement

GOLDEN_MANIFESTS = Path(__file__).parent / "fixtures" / "golden" / "manifests"


def manifest_params(rel: str) -> tuple[int, int]:
    """(all params, decoder linear params) of a golden manifest, counted here from its shapes."""
    raw = json.loads((GOLDEN_MANIFESTS / rel).read_text())
    total = sum(math.prod(shape) for shape, _ in raw.values())
    linear = sum(math.prod(shape) for key, (shape, _) in raw.items()
                 if key.startswith("model.layers.") and key.endswith("_proj.weight"))
    return total, linear


def run_plan(capsys, *args: str) -> tuple[int, dict | str, str]:
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in args else out), err


# --- placement profiles ----------------------------------------------------------------------
@pytest.mark.parametrize("spec, profile, device", [
    ("24gb", "24gb", "cuda:0"), ("profile:48gb", "48gb", "cuda:0"), ("80gb@cuda:1", "80gb", "cuda:1"),
])
def test_profiles_parse(spec, profile, device):
    plan = Placement.parse(spec)
    assert (plan.profile_name, plan.devices, plan.kind) == (profile, (device,), "gpu")
    assert plan.budget_bytes() == {device: int(PROFILES[profile].budget.removesuffix("GiB")) * GiB}
    assert plan == Placement.profile(profile, device=device)


def test_profile_contents():
    small, mid, big = (Placement.profile(n) for n in ("24gb", "48gb", "80gb"))
    assert small.quantization_method == "nf4" and small.vae_tiling
    assert small.storage_for("detokenizer") == "cpu" and small.device_for("detokenizer") == "cuda:0"
    assert mid.quantization_method is None and mid.storage_for("vae") == "cpu"
    assert big.offload_components == () and big.storage_for("detokenizer") == "cuda:0"
    assert Placement.parse("cpu+int8").quantization == {"method": "int8"}
    assert Placement.parse("24gb+none").quantization is None


@pytest.mark.parametrize("spec, message", [
    ("profile:12gb", "unknown memory profile"), ("cpu+int3", "unknown quantization"),
    ("tpu", "unknown placement"),
])
def test_bad_specs_are_clear(spec, message):
    with pytest.raises(ValueError, match=message):
        Placement.parse(spec)


# --- the official plan -------------------------------------------------------------------------
def test_shipped_manifests_equal_the_golden_ones():
    shipped = sorted(p.relative_to(manifests_dir()) for p in manifests_dir().rglob("*.json"))
    assert len(shipped) == 5
    for rel in shipped:
        assert (manifests_dir() / rel).read_bytes() == (GOLDEN_MANIFESTS / rel).read_bytes(), rel


def test_official_24gb_plan_fits_and_adds_up(capsys, monkeypatch):
    from core_models.checkpoint import reading

    def no_tensor_data(*args, **kwargs):
        raise AssertionError("the plan read tensor data")

    monkeypatch.setattr(reading, "load_state_dict_file", no_tensor_data)
    code, plan, _ = run_plan(capsys, "--official", "--profile", "24gb", "--json")
    assert code == 0 and plan["fits"]
    assert plan["peak"]["cuda:0"] <= 24 * GiB
    parts = {c["name"]: c for c in plan["components"]}
    llm_params, llm_linear = manifest_params("seed_x_i/llm_hf.json")
    assert parts["llm"]["params"] == llm_params and parts["llm"]["quantized_params"] == llm_linear
    # NF4: half a byte per linear weight + fp32 absmax per 64; the rest (embeddings, head) bf16
    nf4 = parts["llm"]["bytes"] - (llm_params - llm_linear) * 2
    assert llm_linear * 0.5 < nf4 <= llm_linear * (0.5 + 4 / 64) + 1
    assert 6.5e9 < parts["llm"]["bytes"] < 8.5e9  # "13B in NF4 ~ 7 GB"
    assert parts["vit"]["params"] == manifest_params("qwen_vit_G_448.json")[0] == 1_935_610_624
    assert parts["agent"]["params"] == manifest_params("seed_x_i/agent_pytorch_model.json")[0]
    for stage, rel in ((1, "detokenizer_first_stage_SDXLAdapter.json"),
                       (2, "detokenizer_second_stage_SDXLAdapterWithLatentImage.json")):
        part = parts[f"detokenizer_stage{stage}"]
        assert part["params"] == manifest_params(rel)[0]
        assert (part["lives_on"], part["runs_on"], part["transient"]) == ("cpu", "cuda:0", True)
    # resident on the card: ViT + LLM + resamplers; plus KV, workspace, one stage + VAE, overhead
    resident = sum(parts[n]["bytes"] for n in ("vit", "llm", "agent"))
    terms = {t["name"].split(" at ")[0]: t["bytes"] for t in plan["terms"]}
    visiting = parts["detokenizer_stage2"]["bytes"] + parts["vae"]["bytes"]
    expected = resident + terms["KV cache"] + visiting + max(terms["UNet"], terms["VAE decode"]) + GiB
    assert plan["peak"]["cuda:0"] == expected
    assert terms["KV cache"] == 2 * 40 * 5120 * plan["context"] * 2


def test_official_80gb_plan_is_bf16_everywhere(capsys):
    code, plan, _ = run_plan(capsys, "--official", "--profile", "80gb", "--json")
    assert code == 0 and plan["fits"] and plan["peak"]["cuda:0"] <= 80 * GiB
    parts = {c["name"]: c for c in plan["components"]}
    llm_params, _ = manifest_params("seed_x_i/llm_hf.json")
    assert parts["llm"]["bytes"] == llm_params * 2 and 25.5e9 < parts["llm"]["bytes"] < 26.5e9
    assert set(plan["peak"]) == {"cuda:0"}  # nothing waits in CPU RAM
    assert all(not c["transient"] and c["dtype"] == "bfloat16" for c in plan["components"])


def test_a_plan_that_does_not_fit_exits_non_zero(capsys):
    code, out, err = run_plan(capsys, "--official", "--profile", "80gb", "--max-memory",
                              "cuda:0=24GiB,cpu=64GiB")
    assert code == 1
    assert "DOES NOT FIT" in out and "does not fit" in err and "cuda:0: needs" in err


def test_text_output_and_custom_budget(capsys):
    code, out, _ = run_plan(capsys, "--official", "--profile", "24gb", "--max-memory",
                            "cuda:0=30GiB,cpu=64GiB", "--context", "2048")
    assert code == 0
    assert "estimated peak on cuda:0" in out and "of 30.00 GiB: fits" in out
    assert "of 64.00 GiB: fits" in out and "2048 tokens" in out


@pytest.mark.parametrize("args, message", [
    ((), "TREE or --official"), (("--official", "--profile", "12gb"), "unknown memory profile"),
    (("--official", "--max-memory", "cuda:0"), "DEVICE=SIZE"),
    (("--official", "--max-memory", "cuda:0=lots"), "cannot parse size"),
    (("--official", "--placement", "split:cuda:0,cuda:1"), "one-device placements"),
])
def test_bad_invocations(capsys, args, message):
    code, _, err = run_plan(capsys, *args)
    assert code == 2 and message in err


# --- a release-layout tree, from headers only --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    from core_models.config import SeedXConfig
    from core_models.stack import SeedXStack

    root = tmp_path_factory.mktemp("tiny-release")
    stack = SeedXStack.from_config(SeedXConfig.tiny(), seed=0)
    stack.save_pretrained(root, stages=(1, 2))
    counts = {"vit": stack.vit, "agent+llm": stack.agent, "detokenizer_stage1": stack.detokenizer(1),
              "detokenizer_stage2": stack.detokenizer(2), "vae": stack.vae}
    return root, {k: sum(p.numel() for p in m.parameters()) for k, m in counts.items()}


def test_plan_of_a_tree_reads_headers_only(tiny_tree, capsys, monkeypatch):
    from core_models.checkpoint import reading

    root, counts = tiny_tree

    def no_tensor_data(self, key):
        raise AssertionError(f"the plan read tensor {key}")

    monkeypatch.setattr(reading.SafetensorsFile, "__getitem__", no_tensor_data)
    monkeypatch.setattr(reading, "_torch_load", lambda *a, **k: no_tensor_data(None, a))
    code, plan, _ = run_plan(capsys, str(root), "--placement", "cpu+int8", "--json")
    assert code == 0
    parts = {c["name"]: c for c in plan["components"]}
    assert parts["vit"]["params"] == counts["vit"]
    assert parts["llm"]["params"] + parts["agent"]["params"] == counts["agent+llm"]
    for name in ("detokenizer_stage1", "detokenizer_stage2", "vae"):
        assert parts[name]["params"] == counts[name], name
    assert parts["llm"]["quantization"] == "int8" and parts["llm"]["quantized_params"] > 0
    assert set(plan["peak"]) == {"cpu"} and plan["budget"] == {}


def test_plan_of_a_tree_24gb_text(tiny_tree, capsys):
    root, _ = tiny_tree
    code, out, _ = run_plan(capsys, str(root), "--profile", "24gb")
    assert code == 0 and "profile 24gb" in out and "nf4" in out and ": fits" in out


def test_plan_of_a_missing_tree(tmp_path, capsys):
    code, _, err = run_plan(capsys, str(tmp_path / "nowhere"))
    assert code == 2 and "no model folder" in err
