"""Time to first token per turn of a 10-turn session: kept KV cache vs. full re-prefill.

Each turn adds one new image (448x448: one 1x1 grid, 2 views, 132 prompt tokens) and about 40
tokens of text, then decodes exactly 16 tokens (EOS and ``<img>`` are masked, so every turn
decodes 16 and nothing is denoised). The time to first token (TTFT) of a turn runs from the
call that starts it to the moment its first reply token is chosen; it covers loading the image,
the ViT (the new image only: older ones hit the runtime's ViT cache), the prompt template, the
prefill and the first decoding step. With the cache kept (``keep_cache=True``) a turn prefills
only its own tokens; with ``keep_cache=False`` it re-prefills the whole history, as a stateless
server would.

Both modes run in one process, interleaved, ``--reps`` times (median per turn), each repetition
with fresh pictures so that every turn really encodes its new image. Results (both curves, the
turn-N / turn-1 ratios, the raw timings and the setup) go to a JSON file and a table is printed.
The issue's target: kept-cache ratio <= 1.3, while the re-prefill ratio grows with the history.

    python benchmarks/bench_multiturn.py [--turns 10] [--reps 5] [--threads 1] [--out FILE]

(the JSON goes to ``runs/bench_multiturn.json`` unless ``--out`` says otherwise). This is a measurement, not a test: nothing here asserts a time (``--check`` makes the exit
status reflect the target, for CI that wants it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_KEPT_RATIO = 1.3
WORDS = ("please look closely at this new picture and tell me what changed compared with the "
         "previous ones, which colours stand out, where the brightest region is, whether any "
         "objects or people appear, and how the overall composition and lighting feel to you "
         "today in a few short sentences").split()


def turn_text(tokenizer, turn: int, tokens: int) -> str:
    """About ``tokens`` tokens of plain text (whole words, as many as fit)."""
    words = [f"Turn {turn + 1}:"]
    for word in WORDS * 4:
        if len(tokenizer.encode(" ".join(words + [word]))) <= tokens:
            words.append(word)
    return " ".join(words)


def picture(seed: int, size: int = 448) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def fixed_length_generation(runtime, clock: list[float]):
    """``runtime.new_generation`` whose decoding never stops early or starts an image, and
    which notes the time its first token of each turn is chosen."""
    from core_models.generation import GenerationSession

    banned = [runtime.tokenizer.eos_token_id, runtime.tokenizer.boi_token_id]

    class FixedLength(GenerationSession):
        def next_token_logits(self):
            logits = super().next_token_logits()
            logits[banned] = float("-inf")
            return logits

        def stream(self, *args, **kwargs):
            first = True
            for event in super().stream(*args, **kwargs):
                if first and event.token_id is not None:
                    clock.append(time.perf_counter())
                    first = False
                yield event

    return lambda agent: FixedLength(agent, runtime.tokenizer)


def run_session(runtime, clock, texts, seeds, *, keep_cache: bool, decode: int):
    """One conversation; returns per-turn (ttft_s, turn_s, prompt_tokens, cached_tokens)."""
    from seedx_agent.types import TurnDone

    session = runtime.open_session(keep_cache=keep_cache, max_new_tokens=decode)
    rows = []
    for text, seed in zip(texts, seeds):
        clock.clear()
        start = time.perf_counter()
        done = None
        for event in session.turn(text, [picture(seed)]):
            done = event
        end = time.perf_counter()
        turn = session.history[-1]
        if not isinstance(done, TurnDone) or done.finish_reason != "max_new_tokens" \
                or turn.reply_tokens != decode or not clock:
            raise RuntimeError(f"turn did not decode exactly {decode} tokens: {done!r}")
        rows.append((clock[0] - start, end - start, turn.prompt_tokens, session.cached_tokens))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--decode", type=int, default=16, help="tokens decoded per turn")
    parser.add_argument("--text-tokens", type=int, default=40, help="text tokens per turn")
    parser.add_argument("--placement", default="cpu", help="cpu, cuda:0, ... (Placement.parse)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (0: torch's default). One thread is the fastest "
                             "and steadiest for the tiny stack, above all on a shared machine")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_multiturn.json",
                        help="where the JSON goes (default: runs/, which git ignores)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)

    import torch

    from seedx_agent.runtime import Runtime

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    runtime = Runtime.from_pretrained("tiny", placement=args.placement, load_plugins=False)
    clock: list[float] = []
    runtime.new_generation = fixed_length_generation(runtime, clock)
    texts = [turn_text(runtime.tokenizer, i, args.text_tokens) for i in range(args.turns)]
    modes = {"kept_cache": True, "full_reprefill": False}

    # warm-up: first-call costs (allocator, lazy inits) are not what is measured
    run_session(runtime, clock, texts[:3], [10_000 + i for i in range(3)], keep_cache=True,
                decode=args.decode)
    raw: dict[str, list[list]] = {mode: [] for mode in modes}
    for rep in range(args.reps):
        order = list(modes.items())[::1 if rep % 2 == 0 else -1]  # alternate who goes first
        for mode, keep in order:
            m = list(modes).index(mode)
            seeds = [100_000 * (2 * rep + m + 1) + i for i in range(args.turns)]
            raw[mode].append(run_session(runtime, clock, texts, seeds, keep_cache=keep,
                                         decode=args.decode))

    result = {
        "benchmark": "multiturn time to first token",
        "setup": {
            "model": "tiny (untrained, random weights)", "placement": runtime.placement.describe(),
            "torch_threads": torch.get_num_threads(), "turns": args.turns, "reps": args.reps,
            "decode_tokens": args.decode, "text_tokens": [len(runtime.tokenizer.encode(t)) for t in texts],
            "image": "448x448, new per turn and repetition", "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
        },
        "prompt_tokens_per_turn": [r[2] for r in raw["kept_cache"][0]],
        "context_tokens_after_turn": [r[3] for r in raw["kept_cache"][0]],
    }
    for mode in modes:
        ttft = [statistics.median(rep[t][0] for rep in raw[mode]) * 1e3 for t in range(args.turns)]
        total = [statistics.median(rep[t][1] for rep in raw[mode]) * 1e3 for t in range(args.turns)]
        result[mode] = {
            "ttft_ms_median": [round(v, 3) for v in ttft],
            "turn_ms_median": [round(v, 3) for v in total],
            f"ratio_turn{args.turns}_over_turn1": round(ttft[-1] / ttft[0], 3),
            "ttft_ms_raw": [[round(r[0] * 1e3, 3) for r in rep] for rep in raw[mode]],
        }
    kept = result["kept_cache"][f"ratio_turn{args.turns}_over_turn1"]
    full = result["full_reprefill"][f"ratio_turn{args.turns}_over_turn1"]
    result["target"] = {"kept_ratio_max": TARGET_KEPT_RATIO,
                        "met": kept <= TARGET_KEPT_RATIO and full > kept}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"time to first token, median of {args.reps} (ms); {result['setup']['placement']}, "
          f"{result['setup']['torch_threads']} thread(s)")
    print(f"{'turn':>4} {'context':>8} {'kept cache':>11} {'re-prefill':>11}")
    for t in range(args.turns):
        print(f"{t + 1:>4} {result['context_tokens_after_turn'][t]:>8} "
              f"{result['kept_cache']['ttft_ms_median'][t]:>11.2f} "
              f"{result['full_reprefill']['ttft_ms_median'][t]:>11.2f}")
    print(f"turn {args.turns} / turn 1: kept cache {kept:.2f} (target <= {TARGET_KEPT_RATIO}), "
          f"full re-prefill {full:.2f}")
    print(f"written to {args.out}")
    return 0 if result["target"]["met"] or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
