"""Latency per call of a 10-call LangChain conversation on the Nano: kept conversation vs. none.

LangChain sends the whole history on every call. `ChatSeedX` keeps the session (and its KV
cache) of each conversation it answered, keyed by that history, so call N prefills only its new
message; with ``keep_cache=False`` every call starts a new session, brings it to the history
(the earlier replies are prefilled as given, not generated again) and re-prefills all of it.

Each call sends the history plus one new human message of about ``--tokens`` tokens (the first
also carries `examples/nano/scene.png`) and decodes exactly ``--decode`` tokens (EOS and
``<img>`` masked, so no call stops early or denoises). The latency of a call is the whole
``invoke``, from LangChain's messages in to the `AIMessage` out. Both modes run in one process,
alternating, ``--reps`` times; the median per call is reported, with the call-10 / call-1 ratio
of each mode. The target: at most 1.3 with the conversation kept.

    python benchmarks/langchain_cache.py [--calls 10] [--reps 3] [--out runs/langchain_cache.json]

A measurement, not a test: nothing asserts a time (``--check`` makes the exit status say
whether the target was met).
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

TARGET_KEPT_RATIO = 1.3
SCENE = ROOT / "examples" / "nano" / "scene.png"


def conversation(chat, texts: list[str]) -> list[dict]:
    """One conversation of ``len(texts)`` calls; per call its latency and token counts."""
    from langchain_core.messages import HumanMessage

    scene = base64.b64encode(SCENE.read_bytes()).decode()
    history: list = []
    rows = []
    for n, text in enumerate(texts):
        content: list = [{"type": "text", "text": text}]
        if n == 0:
            content.insert(0, {"type": "image", "base64": scene, "mime_type": "image/png"})
        history.append(HumanMessage(content=content))
        start = time.perf_counter()
        reply = chat.invoke(history)
        seconds = time.perf_counter() - start
        history.append(reply)
        usage = reply.usage_metadata
        rows.append({"seconds": seconds, "input_tokens": usage["input_tokens"],
                     "cache_read": usage["input_token_details"]["cache_read"],
                     "output_tokens": usage["output_tokens"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per new human message")
    parser.add_argument("--decode", type=int, default=12, help="tokens decoded per call")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "langchain_cache.json")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)

    import torch

    import seedx_agent
    from bench_multiturn import fixed_length_generation, turn_text
    from seedx_agent.integrations.langchain import ChatSeedX

    torch.set_num_threads(args.threads)
    runtime = seedx_agent.from_pretrained("nano")
    runtime.new_generation = fixed_length_generation(runtime, [])
    texts = [turn_text(runtime.tokenizer, n, args.tokens) for n in range(args.calls)]
    modes = {"kept": True, "rebuilt": False}
    runs: dict[str, list[list[dict]]] = {mode: [] for mode in modes}
    conversation(ChatSeedX(runtime=runtime, max_tokens=args.decode), texts[:2])  # warm up
    for _ in range(args.reps):
        for mode, keep in modes.items():
            chat = ChatSeedX(runtime=runtime, max_tokens=args.decode, keep_cache=keep)
            runs[mode].append(conversation(chat, texts))

    medians = {mode: [statistics.median(r[n]["seconds"] for r in reps) for n in range(args.calls)]
               for mode, reps in runs.items()}
    ratios = {mode: m[-1] / m[0] for mode, m in medians.items()}
    print("| call | kept (s) | tokens reused | rebuilt (s) | tokens prefilled |")
    print("| --- | --- | --- | --- | --- |")
    for n in range(args.calls):
        kept, rebuilt = runs["kept"][0][n], runs["rebuilt"][0][n]
        print(f"| {n + 1} | {medians['kept'][n]:.3f} | {kept['cache_read']} | "
              f"{medians['rebuilt'][n]:.3f} | {rebuilt['input_tokens']} |")  # all of it, each call
    print(f"\ncall {args.calls} / call 1: kept {ratios['kept']:.2f} (target <= "
          f"{TARGET_KEPT_RATIO}), rebuilt {ratios['rebuilt']:.2f}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "medians_s": medians, "ratios": ratios, "target_kept_ratio": TARGET_KEPT_RATIO,
        "runs": runs, "setup": {"calls": args.calls, "reps": args.reps, "tokens": args.tokens,
                                "decode": args.decode, "threads": args.threads,
                                "python": platform.python_version(), "torch": torch.__version__,
                                "machine": platform.machine()}}, indent=2))
    return 1 if args.check and ratios["kept"] > TARGET_KEPT_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
