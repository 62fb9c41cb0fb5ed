"""``python -m seedx_nano.train``: the command line of the Nano's training pipeline.

Same flags as the ``python -m core_models.nano.train`` it replaces, so a run directory made by
that command resumes when the same command line is given here (docs/nano.md, "Reproduce").
Exit codes: 0 finished, 130 stopped (SIGINT / SIGTERM, checkpoint written: rerun to resume).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from core_models.files import write_json

from .export import EXPORT_DIR
from .loop import STOPPER, Interrupted
from .pipeline import ENTRY_POINT, run_pipeline
from .plan import STAGES, Plan, parse_stage_values
from .run import Run, say
from .warm_start import WarmStartError, warm_start

DESCRIPTION = ("SEED-X Nano: the staged, resumable, deterministic training pipeline "
               "(docs/nano.md).")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=f"python -m {ENTRY_POINT}", description=DESCRIPTION)
    parser.add_argument("--out", type=Path, default=Path("runs/nano"), help="run directory")
    parser.add_argument("--smoke", action="store_true", help="tiny data, a few steps per stage")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated subset of {','.join(STAGES)} (in pipeline order)")
    parser.add_argument("--steps", help="per-stage step counts, e.g. vit=2000,llm=6000")
    parser.add_argument("--minutes", "--minutes-per-stage", dest="minutes",
                        help="per-stage minute caps, e.g. vae=40,detok1=110")
    parser.add_argument("--batch", help="per-stage batch sizes, e.g. llm=24")
    parser.add_argument("--lr", help="per-stage learning rates")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-scenes", type=int)
    parser.add_argument("--n-examples", type=int)
    parser.add_argument("--n-pairs", type=int)
    parser.add_argument("--n-eval", type=int)
    parser.add_argument("--eval-samples", type=int)
    parser.add_argument("--ckpt-every", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--loc-sigma", type=float, default=None, metavar="BINS",
                        help="LLM: Gaussian targets over neighbouring location bins (0: plain "
                             "cross-entropy)")
    parser.add_argument("--loc-ordered-init", dest="loc_ordered_init", action="store_true",
                        default=None, help="LLM: location-token embeddings start in bin order")
    parser.add_argument("--vit-box-weight", type=float, default=None, metavar="W",
                        help="ViT: weight of the per-cell object-box read-out (0: off)")
    parser.add_argument("--detok-prediction", choices=("v_prediction", "epsilon"), default=None,
                        help="what the de-tokenizer's UNet predicts (default v_prediction)")
    parser.add_argument("--detok2-identity", type=float, default=None, metavar="F",
                        help="stage 2: share of 'no features -> the source' pairs (default 0.15)")
    parser.add_argument("--detok2-conv-in-lr", type=float, default=None, metavar="X",
                        help="stage 2: lr multiplier of conv_in (default 10)")
    parser.add_argument("--parallel", dest="parallel", action="store_true", default=None)
    parser.add_argument("--no-parallel", dest="parallel", action="store_false")
    parser.add_argument("--no-export", action="store_true", help="skip the export stage")
    parser.add_argument("--export-dir", type=Path, default=None,
                        help=f"where export writes the shipped tree (default {EXPORT_DIR}; "
                             "--smoke: <out>/export)")
    parser.add_argument("--warm-start", type=Path, default=None, metavar="DIR",
                        help="take the stages this run lacks from DIR: another run directory "
                             "(finished or resumable stages) or a Nano export (its finished stages)")
    parser.add_argument("--interrupt-after", help=argparse.SUPPRESS)  # tests: stage=N steps
    args = parser.parse_args(argv)

    plan = Plan.smoke_plan() if args.smoke else Plan()
    for name in ("steps", "minutes", "batch", "lr"):
        cast = float if name in ("minutes", "lr") else int
        getattr(plan, name).update(parse_stage_values(getattr(args, name), cast))
    for name in ("seed", "threads", "n_scenes", "n_examples", "n_pairs", "n_eval", "eval_samples",
                 "ckpt_every", "log_every", "parallel", "loc_sigma", "loc_ordered_init",
                 "vit_box_weight", "detok_prediction", "detok2_identity", "detok2_conv_in_lr"):
        value = getattr(args, name)
        if value is not None:
            setattr(plan, name, value)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {STAGES}")
    stages = [s for s in STAGES if s in stages and not (args.no_export and s == "export")]
    export_dir = args.export_dir or (args.out / "export" if args.smoke else EXPORT_DIR)

    torch.set_num_threads(plan.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "plan.json", asdict(plan), sort_keys=True)
    interrupt_after = parse_stage_values(args.interrupt_after, int) if args.interrupt_after else None
    run = Run(args.out, plan, interrupt_after)
    if args.warm_start is not None:
        try:
            warm_start(run, args.warm_start)
        except WarmStartError as err:
            parser.error(str(err))
    # What a child lane needs to rebuild the same plan.
    child_argv = _strip_options(argv, ("--stages", "--threads", "--export-dir", "--warm-start"),
                                ("--parallel", "--no-parallel", "--no-export"))
    say("pipeline", f"stages {stages}, out {args.out}, threads {plan.threads}")
    STOPPER.install()
    try:
        run_pipeline(run, stages, export_dir, child_argv)
    except Interrupted as err:
        say("pipeline", f"interrupted in {err}; rerun the same command to resume")
        return 130
    finally:
        STOPPER.uninstall()
        STOPPER.requested = None
    say("pipeline", "finished")
    return 0


def _strip_options(argv: list[str], with_value: tuple[str, ...], flags: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in with_value:
            skip = True
            continue
        if any(a.startswith(o + "=") for o in with_value) or a in flags:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
