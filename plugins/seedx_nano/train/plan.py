"""The plan of one run: which stages, how many steps, how long, how big.

A `Plan` is plain data (written to ``<out>/plan.json`` at every start), so two runs with the same
plan and seed train the same weights. The 6 h defaults are sized from measured throughput on a
2-core machine (docs/nano.md, "Budgets"); `Plan.smoke_plan` is a few steps of every stage for CI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

STAGES = ("data", "vit", "vae", "features", "llm", "detok1", "detok2", "lora", "export")
TRAINED = ("vit", "vae", "llm", "detok1", "detok2", "lora")


@dataclass
class Plan:
    seed: int = 0
    threads: int = 2
    # data
    n_scenes: int = 12000          # random scenes -> any-res views for the ViT and VAE
    n_examples: int = 24000        # task examples for the LLM (and the de-tokenizers' targets)
    n_eval: int = 256              # held-out task examples / scenes (EVAL seeds)
    n_pairs: int = 8000            # extra edit / try-on / story examples for de-tokenizer stage 2
    # steps, minute caps, batch sizes and learning rates per stage
    steps: dict = field(default_factory=lambda: dict(vit=2000, vae=6000, llm=6000, detok1=5000,
                                                     detok2=2500, lora=300))
    minutes: dict = field(default_factory=lambda: dict(vit=10, vae=40, llm=150, detok1=110,
                                                       detok2=55, lora=6))  # lora: per variant
    batch: dict = field(default_factory=lambda: dict(vit=64, vae=16, llm=24, detok1=32, detok2=32,
                                                     lora=16))
    lr: dict = field(default_factory=lambda: dict(vit=1e-3, vae=1e-3, llm=1e-3, detok1=5e-4,
                                                  detok2=2e-4, lora=1e-3))
    warmup: int = 100
    ckpt_every: int = 200
    log_every: int = 25
    lora_rank: int = 16
    # how the LLM learns location tokens (loc_target): Gaussian targets sigma bins wide (0: plain
    # cross-entropy) and ordered initial embeddings
    loc_sigma: float = 0.0
    loc_ordered_init: bool = False
    p_uncond: float = 0.1          # classifier-free dropout of the de-tokenizer conditioning
    vit_box_weight: float = 0.0  # > 0: ViT tokens also read out their object's box (vit.py)
    # what the de-tokenizer's UNet predicts (the exported scheduler's prediction_type): with
    # "v_prediction" the output at high noise is about -x0, so stage 2 can carry the source
    # through directly (docs/nano.md, "Edits"); "epsilon" is SDXL's own
    detok_prediction: str = "v_prediction"
    detok2_identity: float = 0.15  # share of stage-2 batches that are "no features -> the source"
    detok2_conv_in_lr: float = 10.0  # lr multiplier of conv_in, whose source channels start at 0
    eval_samples: int = 32         # pictures sampled per de-tokenizer evaluation
    sample_steps: int = 20         # Euler steps when sampling for evaluation
    guidance: float = 3.0
    parallel: bool = True
    smoke: bool = False

    @classmethod
    def smoke_plan(cls) -> "Plan":
        return cls(n_scenes=24, n_examples=40, n_eval=8, n_pairs=16,
                   steps=dict(vit=2, vae=2, llm=2, detok1=2, detok2=2, lora=1),
                   minutes=dict(vit=5, vae=5, llm=5, detok1=5, detok2=5, lora=5),
                   batch=dict(vit=8, vae=4, llm=2, detok1=4, detok2=4, lora=2),
                   warmup=1, ckpt_every=1, log_every=1, lora_rank=4, eval_samples=2,
                   sample_steps=2, parallel=False, smoke=True)


def parse_stage_values(text: str | None, cast: Callable) -> dict:
    """``"vit=2000,llm=6000"`` -> ``{"vit": 2000, "llm": 6000}``; only stages that train."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            key, _, value = item.partition("=")
            if key.strip() not in TRAINED:
                raise SystemExit(f"unknown stage {key!r} in {text!r}; stages with steps: {TRAINED}")
            out[key.strip()] = cast(value)
    return out
