"""The resumable training loop every trained stage runs, and what makes it deterministic.

Step *k* of a stage draws its batch, noise, timesteps and dropout from a generator seeded by
``sha256(seed/stage/k)`` (`step_generator`), never from global state, so a run resumed from a
checkpoint at step *k* takes exactly the steps a straight run would. SIGINT / SIGTERM only set a
flag (`Stopper`); the loop writes its checkpoint at the end of the current step and raises
`Interrupted`, and the command exits with 130.
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections import defaultdict
from typing import Callable

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, restore_rng, rng_state, save_fp16, save_torch
from .run import Run, say


def step_seed(seed: int, stage: str, step: int) -> int:
    digest = hashlib.sha256(f"{seed}/{stage}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, stage, step))


class Interrupted(Exception):
    """Raised after the checkpoint was written, when a stop was requested."""


class Stopper:
    """SIGINT/SIGTERM set a flag; the training loop checkpoints and raises `Interrupted`."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous = {}

    def install(self) -> "Stopper":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


STOPPER = Stopper()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, constant, then linear decay to 10 % over the last 30 % of ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    decay_start = int(0.7 * total)
    if step < decay_start or total <= decay_start:
        return 1.0
    return 1.0 - 0.9 * (step - decay_start) / max(1, total - decay_start)


def train_loop(run: Run, stage: str, modules: dict[str, nn.Module], params: list,
               step_fn: Callable[[int, torch.Generator], dict[str, float]], *,
               steps_key: str | None = None, items_per_step: int = 1,
               definition: dict | None = None, earlier_definition: dict | None = None) -> dict:
    """Run ``step_fn`` until ``plan.steps[stage]`` or ``plan.minutes[stage]``; checkpoint and resume.

    The checkpoint (``<stage_dir>/ckpt.pt``) holds every module's state, the optimizer, the step,
    the elapsed time, the RNG states and the loss history; it is written atomically every
    ``ckpt_every`` steps, at the end and when a stop is requested (then `Interrupted` is raised).
    The result says where this start began (``resumed_from``: 0 for a fresh stage).

    ``definition``: the plan settings that change what the stage learns (its loss, say); it is
    kept in the checkpoint, and a checkpoint made under other settings is refused instead of
    resumed into a mixture (``earlier_definition``: what checkpoints of versions that kept none
    were made with).
    """
    plan = run.plan
    key = steps_key or stage
    total, minutes = plan.steps[key], plan.minutes[key]
    ckpt_path = run.stage_dir(stage) / "ckpt.pt"
    optimizer = torch.optim.AdamW(params, lr=plan.lr[key], betas=(0.9, 0.99), weight_decay=0.0)
    clipped = [p for group in optimizer.param_groups for p in group["params"]]
    step, elapsed, history = 0, 0.0, []
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        made_with = state.get("definition", earlier_definition)
        if definition is not None and made_with is not None and made_with != definition:
            raise CheckpointError(
                f"{ckpt_path}: stage {stage!r} was trained with {made_with}, this plan asks for "
                f"{definition}; delete the checkpoint to train the stage again under the new "
                "settings, or give the old ones")
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state["elapsed"], state["history"]
        restore_rng(state["rng"])
        say(stage, f"resumed at step {step}/{total} ({elapsed / 60:.1f} min done)")
    resumed_from = step

    def save() -> None:
        save_torch(dict(step=step, elapsed=elapsed, history=history, definition=definition,
                        modules={name: m.state_dict() for name, m in modules.items()},
                        optimizer=optimizer.state_dict(), rng=rng_state()), ckpt_path)

    for m in modules.values():
        m.train()
    budget = minutes * 60
    interrupt_at = run.interrupt_after.get(stage)
    started, window_t, window_n, run_steps = time.time(), time.time(), 0, 0
    sums: dict[str, float] = defaultdict(float)
    stopped_by = "steps"
    while step < total:
        if elapsed >= budget:
            stopped_by = "minutes"
            break
        t = time.time()
        for group in optimizer.param_groups:
            group["lr"] = plan.lr[key] * group.get("lr_mult", 1.0) * lr_factor(step, total, plan.warmup)
        losses = step_fn(step, step_generator(plan.seed, stage, step))
        loss = losses.pop("loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clipped, 1.0)
        optimizer.step()
        step += 1
        run_steps += 1
        elapsed += time.time() - t
        window_n += 1
        sums["loss"] += loss.item()
        for k, v in losses.items():
            sums[k] += float(v)
        if step % plan.log_every == 0 or step == total:
            rate = window_n / max(1e-9, time.time() - window_t)
            means = {k: round(v / window_n, 5) for k, v in sums.items()}
            history.append(dict(step=step, **means))
            say(stage, f"step {step}/{total} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                + f" | {rate:.2f} it/s {rate * items_per_step:.1f} ex/s lr {optimizer.param_groups[0]['lr']:.2e}"
                + f" | {elapsed / 60:.1f}/{minutes} min")
            window_t, window_n, sums = time.time(), 0, defaultdict(float)
        if STOPPER.requested or (interrupt_at is not None and run_steps >= interrupt_at):
            save()
            say(stage, f"stopped at step {step} ({STOPPER.requested or 'interrupt_after'}); "
                       f"checkpoint written, rerun to resume")
            raise Interrupted(stage)
        if step % plan.ckpt_every == 0:
            save()
    save()
    for m in modules.values():
        m.eval()
    return dict(steps=step, resumed_from=resumed_from, minutes=round(elapsed / 60, 2),
                **({"definition": definition} if definition is not None else {}),
                stopped_by=stopped_by, final=history[-1] if history else {},
                wall_minutes_this_run=round((time.time() - started) / 60, 2))


def finish_stage(run: Run, stage: str, result: dict, module: nn.Module, filename: str,
                 evaluate: Callable[[], dict], key: str = "heldout") -> dict:
    """Save a trained stage's weights first, then evaluate it into ``result[key]``.

    In this order because hours of training must survive a broken evaluation: an error is
    recorded in the metrics instead of failing the stage.
    """
    save_fp16(module.state_dict(), run.stage_dir(stage) / filename)
    try:
        result[key] = evaluate()
        say(stage, f"{key}: {result[key]}")
    except Exception as err:
        result[key] = {"error": repr(err)}
        say(stage, f"{key} evaluation failed: {err!r}")
    return result
