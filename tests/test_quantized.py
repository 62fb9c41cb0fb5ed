"""The quantized LLM path on CPU: torchao int8 weight-only through the same loop as NF4.

The NF4 profile needs CUDA for speed, but the code path (`core_models.quantization.quantize_llm`: stage
dense, quantize each decoder linear onto its device) is one loop for both methods, so int8 on CPU
exercises it end to end: the tiny preset, a release-layout tree through the streamed loader, and
the trained Nano with its peft adapters on the quantized base. bitsandbytes >= 0.49 runs NF4 on
CPU too (its CPU kernel wants output widths divisible by 32, which the tiny stack's 172-wide MLP
is not), so NF4 is tested on the Nano.
"""

from __future__ import annotations

import pytest
import torch

import seedx_agent
from core_models.quantization import QUANTIZATION_SKIP, quantizable_linears
from seedx_agent.placement import Placement
from seedx_agent.runtime import Runtime

NANO_PROMPTS = ("[INST] describe the picture in detail [/INST]",
                "[INST] draw a poster for a bakery [/INST]",
                "[INST] how many objects are there? [/INST]")


def quantized_kind(weight) -> str:
    from torchao.utils import TorchAOBaseTensor

    if isinstance(weight, TorchAOBaseTensor):
        return "int8"
    return "nf4" if type(weight).__name__ == "Params4bit" else "dense"


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_the_selection_is_the_decoder_projections():
    from core_models.config import SeedXConfig
    from core_models.mllm import ContinuousLVLM

    llm = ContinuousLVLM.from_config(SeedXConfig.tiny()).llm
    names = {name for name, _ in quantizable_linears(llm)}
    assert names == {f"model.layers.{i}.{p}" for i in range(len(llm.model.layers)) for p in PROJECTIONS}


def assert_only_linears_quantized(agent, method: str) -> None:
    llm = agent.llm
    for i, layer in enumerate(llm.model.layers):
        for projection in PROJECTIONS:
            module = layer.get_submodule(projection)
            base = getattr(module, "base_layer", module)  # under a peft LoRA wrapper
            assert quantized_kind(base.weight) == method, f"layer {i} {projection}"
    assert quantized_kind(llm.get_input_embeddings().weight) == "dense"
    for skipped in QUANTIZATION_SKIP:
        assert quantized_kind(getattr(llm, skipped).weight) == "dense"
    assert all(quantized_kind(p) == "dense" for n, p in agent.named_parameters()
               if not n.startswith("llm.") or "norm" in n)


def test_tiny_int8_runs_a_turn_through_the_public_api():
    runtime = seedx_agent.from_pretrained("tiny", placement="cpu+int8")
    assert runtime.placement.quantization_method == "int8"
    assert_only_linears_quantized(runtime.stack.agent, "int8")
    done = runtime.open_session().ask("hello there", max_new_tokens=6)
    assert not done.errors and done.parts


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    from core_models.config import SeedXConfig
    from core_models.stack import SeedXStack

    root = tmp_path_factory.mktemp("tiny-release")
    SeedXStack.from_config(SeedXConfig.tiny(), seed=0).save_pretrained(root, stages=())
    return root


def last_logits(agent, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return agent.llm(ids).logits[0, -1].float()


def test_a_release_tree_loads_quantized(tiny_tree):
    dense = Runtime.from_pretrained(tiny_tree, placement="cpu", load_plugins=False)
    quantized = Runtime.from_pretrained(tiny_tree, placement="cpu+int8", load_plugins=False)
    assert_only_linears_quantized(quantized.stack.agent, "int8")
    ids = torch.tensor([dense.tokenizer.encode("a red square on the left")])
    ref, got = last_logits(dense.stack.agent, ids), last_logits(quantized.stack.agent, ids)
    # relative to the logits' spread: int8 with per-row scales loses well under 2 %
    assert (got - ref).abs().max() <= 0.02 * ref.abs().max(), (got - ref).abs().max()
    done = quantized.open_session().ask("hello", max_new_tokens=4)
    assert not done.errors


def test_a_quantized_llm_is_not_split(tiny_tree, tmp_path):
    plan = Placement(kind="offload", devices=("cpu",), max_memory={"cpu": 900_000},
                     offload_folder=str(tmp_path / "offload")).quantized("int8")
    with pytest.raises(NotImplementedError, match="quantized LLM must sit on one device"):
        Runtime.from_pretrained(tiny_tree, placement=plan, load_plugins=False)


@pytest.fixture(scope="module")
def nanos():
    return (seedx_agent.from_pretrained("nano", placement="cpu"),
            seedx_agent.from_pretrained("nano", placement="cpu+int8"))


def test_nano_int8_agrees_with_fp32(nanos):
    """Greedy tokens of the trained Nano: int8's argmax at every step of fp32's greedy
    continuation (teacher forced, so one early difference does not count 40 times). Measured:
    100 % on these prompts; the margin asked is 90 %."""
    dense, quantized = nanos
    agree = total = 0
    for variant in ("base", "designer"):
        a, t = teacher_forced_agreement(dense, quantized, variant)
        agree, total = agree + a, total + t
    assert total > 0 and agree / total >= 0.9, f"{agree}/{total}"


def teacher_forced_agreement(dense, quantized, variant: str) -> tuple[int, int]:
    """(agreeing, all) argmax tokens of ``quantized`` along ``dense``'s greedy continuation of
    each of `NANO_PROMPTS`, for ``variant``."""
    agree = total = 0
    a, b = dense.agent(variant).llm, quantized.agent(variant).llm
    for prompt in NANO_PROMPTS:
        ids = torch.tensor([dense.tokenizer.encode(prompt)])
        with torch.no_grad():
            seq = a.generate(ids, max_new_tokens=24, do_sample=False)
            ref = a(seq).logits[0, ids.shape[1] - 1:-1].argmax(-1)
            got = b(seq).logits[0, ids.shape[1] - 1:-1].argmax(-1)
        agree += int((ref == got).sum())
        total += ref.numel()
    return agree, total


def test_nano_nf4_on_cpu(nanos):
    """bitsandbytes' 4-bit NF4 path (the 24gb profile's) on the Nano's LLM, through the same
    loader. 4 bits on a 256-wide model cost more than int8: the margin asked is 75 %."""
    dense = nanos[0]
    nf4 = seedx_agent.from_pretrained("nano", placement="cpu+nf4")
    assert_only_linears_quantized(nf4.stack.agent, "nf4")
    agree, total = teacher_forced_agreement(dense, nf4, "base")
    assert agree / total >= 0.75, f"{agree}/{total}"
    assert not nf4.open_session(variant="designer").ask("a poster", max_new_tokens=4).errors


def test_nano_adapters_switch_on_the_int8_base(nanos):
    dense, quantized = nanos
    assert quantized.adapters is not None and len(quantized.adapters.loaded) >= 2
    agent = quantized.agent("base")
    assert_only_linears_quantized(agent, "int8")
    ids = torch.tensor([quantized.tokenizer.encode(NANO_PROMPTS[1])])
    outputs = {name: last_logits(quantized.agent(name), ids) for name in ("base", "designer", "story")}
    assert (outputs["designer"] - outputs["base"]).abs().max() > 0.1
    assert (outputs["story"] - outputs["designer"]).abs().max() > 0.1
    assert torch.equal(last_logits(quantized.agent("base"), ids), outputs["base"])  # switch back
    # the adapter on the quantized base does what it does on the dense one
    ref = last_logits(dense.agent("designer"), ids)
    assert (outputs["designer"] - ref).abs().max() <= 0.05 * ref.abs().max()
    done = quantized.open_session(variant="designer").ask("a poster for a bakery", max_new_tokens=8)
    assert not done.errors and done.parts
