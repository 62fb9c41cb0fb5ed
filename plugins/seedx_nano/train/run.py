"""The run directory, and the log every stage writes to.

The layout is the contract with runs made by earlier versions (``python -m core_models.nano.train``
wrote the same), so it only ever grows::

    <out>/plan.json                      the plan of the latest start
    <out>/data/*.pt, data/tokenizer/     stage ``data``: rendered examples, the trained tokenizer
    <out>/features/*.pt                  stage ``features``: frozen-encoder caches
    <out>/stages/<stage>/ckpt.pt         the stage's checkpoint (`checkpoint`)
    <out>/stages/<stage>/done.json       the stage's metrics; its presence means "finished"
    <out>/stages/lora_<variant>/         one sub-stage per LoRA adapter
    <out>/lane_llm.log                   the LLM lane's log, when it ran in a child process
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from core_models.config import SeedXConfig
from core_models.files import write_json

from ..config import nano_config
from .plan import Plan

_T0 = time.time()


def say(stage: str, message: str) -> None:
    """One log line: wall clock, minutes since start, stage."""
    print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - _T0) / 60:6.1f}m] [{stage}] {message}",
          flush=True)


class Run:
    """One run directory and its plan; ``interrupt_after`` (tests) stops a stage after N steps."""

    def __init__(self, out: Path, plan: Plan, interrupt_after: dict[str, int] | None = None):
        self.out = Path(out)
        self.plan = plan
        self.interrupt_after = interrupt_after or {}
        self._tokenizer = None

    def stage_dir(self, stage: str) -> Path:
        return self.out / "stages" / stage

    def done(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def mark_done(self, stage: str, metrics: dict) -> None:
        write_json(self.stage_dir(stage) / "done.json", metrics, sort_keys=True)

    @property
    def data_dir(self) -> Path:
        return self.out / "data"

    @property
    def features_dir(self) -> Path:
        return self.out / "features"

    def tokenizer(self):
        from core_models.tokenizer import SeedXTokenizer

        if self._tokenizer is None:
            self._tokenizer = SeedXTokenizer.from_pretrained(self.data_dir / "tokenizer")
        return self._tokenizer

    def config(self) -> SeedXConfig:
        """The Nano config of this run: the trained tokenizer's size, and the VAE's measured
        latent scale once stage ``vae`` is done."""
        vae = self.done("vae")
        cfg = nano_config(scaling_factor=vae["scaling_factor"] if vae else None,
                          vocab_size=len(self.tokenizer()))
        cfg.scheduler["prediction_type"] = self.plan.detok_prediction
        return cfg
