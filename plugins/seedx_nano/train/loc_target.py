"""Location tokens as ordered numbers, not 224 unrelated words.

SEED-X writes a box as four of 224 ``<loc-k>`` tokens. Plain cross-entropy treats ``<loc-100>``
as exactly as wrong as ``<loc-3>`` when the truth is ``<loc-101>``, and the tokens' embeddings
start random, so a small model has to discover the order of the bins from data alone, one bin at
a time. Two levers give it that order for free (docs/nano.md, "Grounding"):

* ``sigma`` > 0: the target of a location token is a Gaussian over neighbouring bins (``sigma``
  bins wide) instead of one bin, so a near miss costs little and gradients reach the neighbours;
* ``ordered_init``: the input and output embeddings of the location tokens start as a smooth
  sinusoidal code of the bin index, so neighbouring bins start close.

Both only change training; the model, its vocabulary and how it is decoded stay SEED-X's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100


def ordered_loc_embeddings(agent: nn.Module, loc_ids: list[int]) -> None:
    """Set the location tokens' rows of the input and output embeddings to a sinusoidal code
    of the bin index, scaled to the rows' current mean norm (so nothing else shifts)."""
    n = len(loc_ids)
    index = torch.tensor(loc_ids)
    llm = agent.llm
    for weight in {id(w): w for w in (llm.get_input_embeddings().weight,
                                      llm.get_output_embeddings().weight)}.values():
        d = weight.shape[1]
        position = torch.arange(n, dtype=torch.float32)[:, None]
        frequency = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(4.0 * n) / d))
        code = torch.zeros(n, d)
        code[:, 0::2] = torch.sin(position * frequency)
        code[:, 1::2] = torch.cos(position * frequency)
        with torch.no_grad():
            scale = weight.norm(dim=1).mean() / code.norm(dim=1).mean()
            weight[index] = (code * scale).to(weight.dtype)


class LocTarget:
    """Next-token loss with Gaussian targets over the bins at location tokens."""

    def __init__(self, loc_ids: list[int], sigma: float):
        self.loc_ids = torch.tensor(loc_ids)
        self.sigma = float(sigma)
        n = len(loc_ids)
        self.bin_of = torch.full((int(self.loc_ids.max()) + 1,), -1, dtype=torch.long)
        self.bin_of[self.loc_ids] = torch.arange(n)
        bins = torch.arange(n, dtype=torch.float32)
        table = torch.exp(-((bins[:, None] - bins[None]) ** 2) / (2 * max(self.sigma, 1e-6) ** 2))
        self.table = table / table.sum(1, keepdim=True)

    def lm_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean over answer tokens: cross-entropy, soft over the bins where the label is a
        location token (``logits`` / ``labels``: the model's, unshifted)."""
        logits, gold = logits[:, :-1].float(), labels[:, 1:]
        valid = gold != IGNORE
        is_loc = valid & torch.isin(gold, self.loc_ids)
        log_p = F.log_softmax(logits[valid], dim=-1)
        flat_gold, flat_loc = gold[valid], is_loc[valid]
        loss = -log_p.gather(-1, flat_gold[:, None])[:, 0]
        if self.sigma > 0 and flat_loc.any():
            q = self.table[self.bin_of[flat_gold[flat_loc]]]
            loss = loss.clone()
            loss[flat_loc] = -(q * log_p[flat_loc][:, self.loc_ids]).sum(-1)
        return loss.mean()
