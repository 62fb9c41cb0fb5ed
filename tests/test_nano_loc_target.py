"""Location tokens as ordered numbers in the Nano's LLM training (``seedx_nano.train.loc_target``),
and the LLM stage refusing to resume a checkpoint trained under other loss settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seedx_nano.train.loc_target import IGNORE, LocTarget, ordered_loc_embeddings

LOC_IDS = list(range(10, 10 + 224))
VOCAB = 10 + 224 + 6


def logits_peaked_at(token: int, n: int = 3) -> torch.Tensor:
    logits = torch.zeros(1, n, VOCAB)
    logits[0, 0, token] = 8.0
    return logits


def labels_of(token: int, n: int = 3) -> torch.Tensor:
    labels = torch.full((1, n), IGNORE)
    labels[0, 1] = token  # predicted from position 0
    return labels


def test_without_width_it_is_plain_cross_entropy():
    target = LocTarget(LOC_IDS, sigma=0.0)
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.tensor([[IGNORE, 3, 50, 120, 2], [IGNORE, IGNORE, 200, 7, IGNORE]])
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE)
    assert torch.allclose(target.lm_loss(logits, labels), expected)


def test_a_near_miss_costs_less_than_a_far_one():
    target, plain = LocTarget(LOC_IDS, sigma=1.5), LocTarget(LOC_IDS, sigma=0.0)
    truth = LOC_IDS[100]
    near = target.lm_loss(logits_peaked_at(LOC_IDS[101]), labels_of(truth))
    far = target.lm_loss(logits_peaked_at(LOC_IDS[140]), labels_of(truth))
    assert near < far
    # plain cross-entropy cannot tell them apart
    assert torch.isclose(plain.lm_loss(logits_peaked_at(LOC_IDS[101]), labels_of(truth)),
                         plain.lm_loss(logits_peaked_at(LOC_IDS[140]), labels_of(truth)))
    # text tokens keep their one-hot target
    assert torch.isclose(target.lm_loss(logits_peaked_at(3), labels_of(3)),
                         plain.lm_loss(logits_peaked_at(3), labels_of(3)))


def test_ordered_embeddings_put_neighbouring_bins_close():
    from seedx_nano.config import nano_config
    from seedx_nano.train.llm import build_agent

    agent = build_agent(nano_config(vocab_size=VOCAB), seed=0)
    before = agent.llm.get_input_embeddings().weight.detach().clone()
    ordered_loc_embeddings(agent, LOC_IDS)
    for weight in (agent.llm.get_input_embeddings().weight, agent.llm.get_output_embeddings().weight):
        rows = F.normalize(weight[LOC_IDS].detach(), dim=1)
        similarity = rows @ rows.T
        neighbours = similarity.diagonal(1).mean()
        far = similarity[torch.arange(100), torch.arange(100) + 100].mean()
        assert neighbours > 0.9 > far + 0.3
    after = agent.llm.get_input_embeddings().weight.detach()
    other = [i for i in range(VOCAB) if i not in LOC_IDS]
    assert torch.equal(before[other], after[other])  # only the location rows changed


def test_the_llm_stage_refuses_a_checkpoint_of_other_loss_settings(tmp_path):
    from torch import nn

    from seedx_nano.train.checkpoint import CheckpointError
    from seedx_nano.train.loop import train_loop
    from seedx_nano.train.plan import Plan
    from seedx_nano.train.run import Run

    plan = Plan.smoke_plan()
    plan.steps["llm"] = 2
    run = Run(tmp_path, plan, interrupt_after={"llm": 1})
    layer = nn.Linear(2, 1)

    def step_fn(step, g):
        return {"loss": layer(torch.randn(4, 2, generator=g)).pow(2).mean()}

    old = {"loc_sigma": 0.0, "loc_ordered_init": False}
    from seedx_nano.train.loop import Interrupted

    with pytest.raises(Interrupted):
        train_loop(run, "llm", {"m": layer}, list(layer.parameters()), step_fn, definition=old)
    run.interrupt_after = {}
    new = {"loc_sigma": 1.5, "loc_ordered_init": True}
    with pytest.raises(CheckpointError, match="loc_sigma"):
        train_loop(run, "llm", {"m": layer}, list(layer.parameters()), step_fn, definition=new)
    # the same settings resume; a checkpoint that recorded none is taken as the earlier settings
    state = torch.load(run.stage_dir("llm") / "ckpt.pt", weights_only=True)
    state.pop("definition")
    torch.save(state, run.stage_dir("llm") / "ckpt.pt")
    with pytest.raises(CheckpointError):
        train_loop(run, "llm", {"m": layer}, list(layer.parameters()), step_fn, definition=new,
                   earlier_definition=old)
    result = train_loop(run, "llm", {"m": layer}, list(layer.parameters()), step_fn,
                        definition=old, earlier_definition=old)
    assert result["resumed_from"] == 1 and result["steps"] == 2 and result["definition"] == old
