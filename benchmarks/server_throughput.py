"""HTTP throughput of ``seedx serve`` on one runtime: 8 concurrent clients ÷ 1 client.

One Nano runtime behind the real app on a real uvicorn (127.0.0.1, in a thread of this
process), driven by the official openai client. Every request is the same image question
("Describe the image." on examples/nano/scene.png, a fresh session each, ``max_tokens`` fixed),
so both modes do the same work: ``--requests`` requests from one client one after another, then
the same number spread over ``--clients`` clients at once. Throughput is requests per second;
the ratio says what concurrency buys on one runtime. The model's device lock serializes the
LLM and the de-tokenizer, so the ratio cannot go far above 1: what overlaps is the HTTP, JSON,
image decoding and store work of one request with the model work of another. A ratio well
below 1 would mean requests slow each other down beyond queueing (it is the regression this
watches for). The modes alternate ``--reps`` times and the medians are reported.

    python benchmarks/server_throughput.py [--clients 8] [--requests 16] [--reps 2] [--out FILE]

This is a measurement, not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENE = ROOT / "examples" / "nano" / "scene.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=16, help="requests per mode and rep")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "server_throughput.json")
    args = parser.parse_args(argv)

    import openai
    import torch
    import uvicorn

    import seedx_agent
    from seedx_agent.integrations.openai_server import create_app
    from seedx_agent.store import SessionStore

    torch.set_num_threads(args.threads)
    runtime = seedx_agent.from_pretrained("nano")
    image = "data:image/png;base64," + base64.b64encode(SCENE.read_bytes()).decode()
    messages = [{"role": "user", "content": [{"type": "text", "text": "Describe the image."},
                                             {"type": "image_url", "image_url": {"url": image}}]}]
    with tempfile.TemporaryDirectory() as store_dir:
        app = create_app(runtime, SessionStore(store_dir))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                               max_retries=0, timeout=600)

        def ask(_: int) -> float:
            started = time.perf_counter()
            reply = client.chat.completions.create(model="nano", messages=messages,
                                                   max_tokens=args.max_tokens)
            assert reply.choices[0].message.content is not None
            return time.perf_counter() - started

        def run(clients: int) -> dict:
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                latencies = list(pool.map(ask, range(args.requests)))
            wall = time.perf_counter() - started
            return {"clients": clients, "wall_s": wall, "requests_per_s": args.requests / wall,
                    "median_latency_s": statistics.median(latencies)}

        ask(0)  # warm-up: first-use loading is not throughput
        runs = {1: [], args.clients: []}
        for _ in range(args.reps):
            for clients in runs:
                runs[clients].append(run(clients))
        server.should_exit = True
        thread.join(30)

    single = statistics.median(r["requests_per_s"] for r in runs[1])
    many = statistics.median(r["requests_per_s"] for r in runs[args.clients])
    result = {"ratio": many / single, "requests_per_s": {"1": single, str(args.clients): many},
              "runs": {str(k): v for k, v in runs.items()},
              "setup": {"model": "nano", "requests": args.requests, "reps": args.reps,
                        "max_tokens": args.max_tokens, "torch_threads": args.threads,
                        "python": platform.python_version(), "machine": platform.machine()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"1 client:  {single:.2f} requests/s (median latency "
          f"{statistics.median(r['median_latency_s'] for r in runs[1]):.2f} s)")
    print(f"{args.clients} clients: {many:.2f} requests/s (median latency "
          f"{statistics.median(r['median_latency_s'] for r in runs[args.clients]):.2f} s)")
    print(f"throughput {args.clients} clients ÷ 1 client: {many / single:.2f}  ({args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
