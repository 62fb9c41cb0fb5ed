"""The stages in pipeline order, and the two lanes that may run side by side.

A finished stage (one with a ``done.json``) is skipped; an unfinished one continues from its
checkpoint. ``llm`` + ``lora`` and ``detok1`` + ``detok2`` only depend on the cached features, so
with ``plan.parallel`` the LLM lane runs in a child process (``python -m seedx_nano.train``, one
thread, log in ``<out>/lane_llm.log``) while this process runs the de-tokenizer lane with the
other thread: on 2 cores two 1-thread jobs give about the same throughput as one 2-thread job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from .data import stage_data
from .detokenizer import stage_detok1, stage_detok2
from .export import export
from .features import stage_features
from .llm import stage_llm
from .loop import STOPPER, Interrupted
from .lora import stage_lora
from .run import Run, say
from .vae import stage_vae
from .vit import stage_vit

ENTRY_POINT = "seedx_nano.train"  # what the child lane runs with ``python -m``


STAGE_FNS: dict[str, Callable[[Run], dict]] = {
    "data": stage_data, "vit": stage_vit, "vae": stage_vae, "features": stage_features,
    "llm": stage_llm, "detok1": stage_detok1, "detok2": stage_detok2, "lora": stage_lora,
}


def run_stage(run: Run, stage: str, export_dir: Path) -> None:
    if stage == "export":
        result = export(run, export_dir)
        run.mark_done("export", result)
        return
    if run.done(stage):
        say(stage, "already done, skipped")
        return
    say(stage, "start")
    t0 = time.time()
    result = STAGE_FNS[stage](run)
    result["stage_wall_minutes"] = round((time.time() - t0) / 60, 2)
    run.mark_done(stage, result)
    say(stage, "done")


def run_pipeline(run: Run, stages: list[str], export_dir: Path, argv_for_child: list[str]) -> None:
    lane_llm = [s for s in ("llm", "lora") if s in stages and not run.done(s)]
    lane_detok = [s for s in ("detok1", "detok2") if s in stages and not run.done(s)]
    child = None
    for stage in stages:
        if stage in ("llm", "lora", "detok1", "detok2") and child is None and run.plan.parallel \
                and lane_llm and lane_detok:
            # Two independent lanes: the LLM lane in a child process, one thread each.
            log_path = run.out / "lane_llm.log"
            cmd = [sys.executable, "-m", ENTRY_POINT, *argv_for_child,
                   "--stages", ",".join(lane_llm), "--threads", "1", "--no-parallel", "--no-export"]
            say("pipeline", f"LLM lane in a child process ({' '.join(lane_llm)}), log {log_path}")
            child = subprocess.Popen(cmd, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)
            torch.set_num_threads(1)
            for s in lane_detok:
                try:
                    run_stage(run, s, export_dir)
                except Interrupted:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    raise
            while child.poll() is None:
                if STOPPER.requested:
                    child.send_signal(signal.SIGTERM)
                    child.wait()
                    raise Interrupted("pipeline")
                time.sleep(2)
            torch.set_num_threads(run.plan.threads)
            if child.returncode != 0:
                raise SystemExit(f"LLM lane failed with exit code {child.returncode}; see {log_path}")
            continue
        if child is not None and stage in ("llm", "lora", "detok1", "detok2"):
            continue
        run_stage(run, stage, export_dir)

