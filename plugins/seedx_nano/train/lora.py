"""Stage ``lora``: one peft LoRA adapter per variant of ``tasks.TASKS`` on the pre-trained LLM.

Each variant (``seed_x_i``, ``seed_x_edit``, ``tryon``, ``slide``, ``story``, ``designer``) is its
own sub-stage ``lora_<variant>`` with its own checkpoint and ``done.json``, so an interrupted
stage resumes inside the adapter it was training. The adapters are written as peft folders under
``stages/lora/adapters/<variant>/``, which the export ships as ``adapters/<variant>/``.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from .. import tasks
from .checkpoint import load_stage_modules
from .llm import LLMData, build_agent, llm_eval
from .loop import train_loop
from .run import Run, say


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_variants(run: Run) -> list[str]:
    return sorted(set(tasks.TASKS.values()))


class LoraView(nn.Module):
    """The LoRA tensors of a peft-wrapped agent, as one module for checkpointing."""

    def __init__(self, agent: nn.Module):
        super().__init__()
        self.__dict__["agent"] = agent

    def state_dict(self, *args, **kwargs):
        return {k: v.detach().clone() for k, v in self.agent.named_parameters() if v.requires_grad}

    def load_state_dict(self, state, strict: bool = True):
        params = dict(self.agent.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v)

    def train(self, mode: bool = True):
        self.agent.train(mode)
        return self


def stage_lora(run: Run) -> dict:
    plan = run.plan
    results = {}
    base_state = load_stage_modules(run, "llm")["agent"]
    for variant in lora_variants(run):
        sub = f"lora_{variant}"
        if run.done(sub):
            results[variant] = run.done(sub)
            continue
        agent = build_agent(run.config(), plan.seed)
        agent.load_state_dict(base_state)
        agent.requires_grad_(False)
        torch.manual_seed(plan.seed + 10)
        lcfg = LoraConfig(r=plan.lora_rank, lora_alpha=plan.lora_rank, lora_dropout=0.0,
                          target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM")
        agent.llm = get_peft_model(agent.llm, lcfg)
        data = LLMData(run, "train", variant)
        if len(data) == 0:
            say("lora", f"{variant}: no training examples, skipped")
            continue
        b = plan.batch["lora"]

        def step_fn(step: int, g: torch.Generator, agent=agent, data=data) -> dict:
            out = agent(**data.batch(data.sample(b, g)))
            return dict(loss=out["total_loss"], lm=out["lm_loss"].item(), rec=out["rec_loss"].item())

        params = [p for p in agent.parameters() if p.requires_grad]
        lora_modules = {"lora": LoraView(agent)}
        result = train_loop(run, sub, lora_modules, params, step_fn, steps_key="lora", items_per_step=b)
        evald = LLMData(run, "eval", variant)
        if len(evald):
            result["heldout"] = llm_eval(agent, evald)
        out_dir = run.stage_dir("lora") / "adapters" / variant
        agent.llm.to(torch.float16)
        agent.llm.save_pretrained(str(out_dir), safe_serialization=True)
        agent.llm.to(torch.float32)
        run.mark_done(sub, result)
        results[variant] = result
        say("lora", f"{variant}: {result.get('heldout')}")
    return dict(variants=results)
