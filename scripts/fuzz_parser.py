"""Fuzz the reply parser with random SEED-X id streams and report crashes and broken properties.

Run it from the repository root (on a shared machine, under the CPU lock and with nice)::

    flock /tmp/seedx-cpu.lock nice -n 10 .venv/bin/python scripts/fuzz_parser.py
    .venv/bin/python scripts/fuzz_parser.py --n 5000 --seed 7

It plays ``--n`` streams (100 000 by default, seeded, so a run is reproducible) through
``ReplyParser`` with the golden tokenizer of the test fixtures, weighted towards the tokens a
model gets wrong: ``<box_start>``/``<box_end>``, ``<loc-N>`` (N past the 224 bins too), ``<img>``
runs of the wrong length, placeholders, ``<patch>``, ``</s>``/``<s>``/``<unk>``, ids no tokenizer
can decode, cut multi-byte characters. Each stream is checked against the properties of
`check_stream` (the same ones ``tests/test_fuzz.py`` checks with hypothesis, which imports this
file); a failing stream is shrunk to a minimal id list that still fails the same way, printed
as a reproducer. It exits 1 on any crash or property violation.

A plain ``random.Random`` is used instead of hypothesis because it is some ten times faster, which
is what makes 100 000 streams a matter of about three minutes on one core.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:   # run as a file, not installed: make the repo importable
    sys.path.insert(0, str(REPO))

from core_models.boxes import LOC_BINS  # noqa: E402
from core_models.tokenizer import SeedXTokenizer  # noqa: E402
from seedx_agent.box_placement import place_boxes  # noqa: E402
from seedx_agent.reply_parser import ImageSlot, ParsedReply, ReplyParser, parse_reply  # noqa: E402
from seedx_agent.types import BoxFound, BoxPart, ImagePart, ImageStarted, TextDelta, TextPart  # noqa: E402

GOLDEN_TOKENIZER = REPO / "tests" / "fixtures" / "golden_tokenizer"
FINISH_REASONS = (None, "eos", "max_new_tokens", "cancelled", "error")
EXTRA_LOCS = 76   # <loc-224> .. <loc-299> on a tokenizer that has more bins than SEED-X


# --- the tokenizer under test ------------------------------------------------------------------

class WatchedTokenizer:
    """The golden tokenizer, watched: the parser must never hand a tag id to ``decode``.

    With ``extra_locs`` it also claims ``<loc-224>``… at ids past the vocabulary, the shape of a
    model folder whose tokenizer has more bins than the 224 SEED-X boxes are measured in.
    """

    def __init__(self, tokenizer: SeedXTokenizer, extra_locs: int = 0) -> None:
        self._tok = tokenizer
        for name in ("bos_token_id", "eos_token_id", "unk_token_id", "boi_token_id",
                     "eoi_token_id", "bop_token_id", "eop_token_id", "box_start_token_id",
                     "box_end_token_id"):
            setattr(self, name, getattr(tokenizer, name))
        self.img_token_ids = list(tokenizer.img_token_ids)
        self.loc_token_ids = list(tokenizer.loc_token_ids) + [len(tokenizer) + i
                                                            for i in range(extra_locs)]
        self.tag_ids = frozenset([*self.img_token_ids, *self.loc_token_ids, *(
            getattr(tokenizer, n) for n in ("bos_token_id", "eos_token_id", "unk_token_id",
                                            "boi_token_id", "eoi_token_id", "bop_token_id",
                                            "eop_token_id", "box_start_token_id",
                                            "box_end_token_id"))])
        self.tags_decoded: list[list[int]] = []

    def decode(self, ids: list[int]) -> str:
        if any(i in self.tag_ids for i in ids):
            self.tags_decoded.append(list(ids))
        return self._tok.decode(ids)


def load_tokenizer() -> SeedXTokenizer:
    return SeedXTokenizer.from_pretrained(GOLDEN_TOKENIZER)


# --- one stream ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stream:
    """One fuzz case: the ids and how the parser is set up for them."""

    ids: tuple[int, ...]
    open_box: bool = False
    num_img_tokens: int = 64
    finish_reason: str | None = None
    extra_locs: bool = False
    input_sizes: tuple[tuple[int, int], ...] = ()        # pictures the turn brought
    generated_sizes: tuple[tuple[int, int], ...] = ()    # sizes given to complete image slots
    chunks: tuple[int, ...] = field(default=(), compare=False)  # feed_many split points

    def reproducer(self) -> str:
        options = [f"open_box={self.open_box}", f"num_img_tokens={self.num_img_tokens}",
                   f"finish_reason={self.finish_reason!r}", f"extra_locs={self.extra_locs}"]
        if self.input_sizes or self.generated_sizes:
            options += [f"input_sizes={list(self.input_sizes)}",
                        f"generated_sizes={list(self.generated_sizes)}"]
        return f"ids={list(self.ids)} ({', '.join(options)})"


def _image_id(n: int) -> str:
    return f"{n:064x}"


def check_stream(stream: Stream, tokenizer: SeedXTokenizer) -> list[str]:
    """The properties one stream must have; returns the broken ones as ``name: detail``.

    An exception escaping from here is a crash of the parser (or of box placement).
    """
    tok = WatchedTokenizer(tokenizer, EXTRA_LOCS if stream.extra_locs else 0)
    ids = list(stream.ids)
    n = stream.num_img_tokens
    kw = dict(open_box=stream.open_box)
    broken: list[str] = []

    def expect(ok: bool, name: str, detail: Callable[[], str]) -> None:
        if not ok:
            broken.append(f"{name}: {detail()}")

    parser = ReplyParser(tok, n, **kw)
    per_token = [parser.feed(i) for i in ids]
    reply = parser.finish(stream.finish_reason)
    events = [e for evs in per_token for e in evs]

    # well-formed parts: they validate again, as models and through JSON
    expect(ParsedReply.model_validate(reply.model_dump()) == reply, "revalidate",
           lambda: "the reply does not validate as ParsedReply")
    expect(ParsedReply.model_validate_json(reply.model_dump_json()) == reply, "json",
           lambda: "the reply does not survive a JSON round trip")
    for a, b in zip(reply.parts, reply.parts[1:]):
        expect(not (isinstance(a, TextPart) and isinstance(b, TextPart)), "adjacent-text",
               lambda: f"two text parts in a row: {a.text!r}, {b.text!r}")
    for part in reply.parts:
        if isinstance(part, TextPart):
            expect(bool(part.text), "empty-text", lambda: "an empty text part")
        elif isinstance(part, BoxPart):
            expect(len(part.bins) == 4 and all(0 <= b < LOC_BINS for b in part.bins), "bins",
                   lambda: f"box bins {part.bins} outside 0..{LOC_BINS - 1}")
        for w in part.warnings:
            expect(w in reply.warnings, "part-warning",
                   lambda: f"part warning {w!r} missing from the reply's warnings")

    # image slots: the right number of tokens, or a warning
    eos_at = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else len(ids)
    runs = sum(1 for i in ids[:eos_at] if i == tok.boi_token_id)
    slots = reply.image_slots
    expect(reply.image_runs == runs == len(slots), "image-runs",
           lambda: f"{runs} <img> fed, image_runs={reply.image_runs}, {len(slots)} slots")
    expect([s.run_index for s in slots] == list(range(len(slots))), "run-index",
           lambda: f"slot indices {[s.run_index for s in slots]}")
    img_ids = set(tok.img_token_ids)
    for s in slots:
        if s.complete:
            inside = ids[s.start + 1:s.end] if s.end is not None else []
            expect(s.num_tokens == n and s.end is not None
                   and ids[s.start] == tok.boi_token_id and ids[s.end] == tok.eoi_token_id
                   and sum(i in img_ids for i in inside) == n, "complete-slot",
                   lambda: f"slot {s.run_index} is complete with {s.num_tokens} of {n} tokens, "
                           f"start={s.start} end={s.end}")
        else:
            expect(bool(s.warnings), "incomplete-slot",
                   lambda: f"slot {s.run_index} ({s.num_tokens} of {n}) has no warning")

    # finish reason
    want = stream.finish_reason or ("eos" if eos_at < len(ids) else "max_new_tokens")
    expect(reply.finish_reason == want, "finish-reason",
           lambda: f"finish_reason {reply.finish_reason!r}, expected {want!r}")
    contradicted = ((want == "eos" and eos_at == len(ids))
                    or (want == "max_new_tokens" and eos_at < len(ids)))
    expect(contradicted == any(w.startswith(f"finished as {want!r}") for w in reply.warnings),
           "reason-warning", lambda: f"finish_reason {want!r} with </s> "
                                     f"{'fed' if eos_at < len(ids) else 'not fed'}: "
                                     f"warnings {reply.warnings}")
    expect(parser.done and parser.finish() is reply, "finish-idempotent",
           lambda: "finish() is not idempotent")
    expect(all(not evs for evs in per_token[eos_at + 1:]), "after-eos",
           lambda: "events after </s>")

    # streaming: the events are the reply, as it grew
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    expect("".join(deltas) == reply.text == parser.text, "deltas",
           lambda: f"deltas {deltas!r} vs text {reply.text!r}")
    expect(all(d and not d[-1].isspace() and d[-1] != "\ufffd" for d in deltas),
           "delta-tail", lambda: f"a delta ends in whitespace or U+FFFD: {deltas!r}")
    expect([e.box for e in events if isinstance(e, BoxFound)] == reply.boxes, "box-events",
           lambda: "BoxFound events differ from the reply's boxes")
    expect([e.index for e in events if isinstance(e, ImageStarted)] == list(range(runs)),
           "image-events", lambda: "ImageStarted events differ from the <img> runs")
    expect(not tok.tags_decoded, "tag-decoded",
           lambda: f"tag ids handed to decode: {tok.tags_decoded[:3]}")

    # one go, and any split into feed_many calls, equal token by token
    whole = parse_reply(ids, tok, n, finish_reason=stream.finish_reason, **kw)
    expect(whole == reply, "one-go", lambda: "parse_reply differs from feeding token by token")
    chunked = ReplyParser(tok, n, **kw)
    cuts = [0, *sorted(c % (len(ids) + 1) for c in stream.chunks), len(ids)]
    chunk_events = [e for a, b in zip(cuts, cuts[1:]) for e in chunked.feed_many(ids[a:b])]
    expect(chunked.finish(stream.finish_reason) == reply and chunk_events == events, "chunked",
           lambda: f"feed_many split at {cuts[1:-1]} differs from feeding token by token")

    # boxes on pictures: placed inside the picture, or not at all
    inputs = [ImagePart(image_id=_image_id(i + 1), width=w, height=h)
              for i, (w, h) in enumerate(stream.input_sizes)]
    sizes = iter(stream.generated_sizes or [(1, 1)])
    parts: list = []
    for p in reply.parts:
        if isinstance(p, ImageSlot):
            if p.complete:
                w, h = next(sizes, (64, 64))
                parts.append(ImagePart(image_id=_image_id(1000 + p.run_index), width=w,
                                       height=h, role="generated"))
        else:
            parts.append(p)
    targets = {q.image_id: q for q in (*inputs, *parts) if isinstance(q, ImagePart)}
    placed = place_boxes(parts, inputs)
    expect([b.bins for b in placed] == [b.bins for b in reply.boxes], "placed-boxes",
           lambda: "place_boxes lost, added or changed boxes")
    for box in placed:
        if box.pixel_xyxy is None:
            expect(not inputs and not any(isinstance(q, ImagePart) for q in parts), "unplaced",
                   lambda: f"box {box.bins} left unplaced although there is a picture")
            continue
        target = targets.get(box.target_image)
        x0, y0, x1, y1 = box.pixel_xyxy
        expect(target is not None and 0 <= x0 <= x1 <= target.width
               and 0 <= y0 <= y1 <= target.height, "pixel-box",
               lambda: f"box {box.bins} -> {box.pixel_xyxy} outside its picture "
                       f"{target and (target.width, target.height)}")
    return broken


# --- random streams ----------------------------------------------------------------------------

class Vocabulary:
    """The ids a stream is drawn from, by kind, from the golden tokenizer."""

    def __init__(self, tokenizer: SeedXTokenizer) -> None:
        t = tokenizer
        self.tokenizer = t
        self.specials = [t.box_start_token_id, t.box_end_token_id, t.boi_token_id,
                         t.eoi_token_id, t.bop_token_id, t.eop_token_id, t.eos_token_id,
                         t.bos_token_id, t.unk_token_id]
        self.locs = list(t.loc_token_ids)
        self.extra_locs = [len(t) + i for i in range(EXTRA_LOCS)]
        self.imgs = list(t.img_token_ids)
        self.text_ids = list(range(3, t.vocab_size))   # 0..2 are <unk>, <s>, </s>
        phrases = ["The car is at", "There are two dogs:", " and", ".", "Sure! Here's",
                   "a sunset 🌅 over the sea", "café", "\n", "  ", "(", "]]", "x,y: 3.5",
                   "<loc-300>", "<loc-224>", "<loc--1>", "<loc-abc>", "<img_00100>", "日本"]
        self.words = [t.encode(p) for p in phrases]
        self.partial_chars = [t.encode(c)[:k] for c in ("🌅", "日", "é", "🐱")
                              for k in range(1, len(t.encode(c)))]
        self.undecodable = [-1, -(2 ** 31), len(t) + EXTRA_LOCS, len(t) + 10_000, 2 ** 31,
                            2 ** 63]

    def box(self, rng: random.Random, locs: int = 4, extra_locs: bool = False) -> list[int]:
        t = self.tokenizer
        pool = self.locs + self.extra_locs if extra_locs and rng.random() < 0.3 else self.locs
        return [t.box_start_token_id, *(rng.choice(pool) for _ in range(locs)),
                t.box_end_token_id]

    def image_run(self, rng: random.Random, n: int) -> list[int]:
        t = self.tokenizer
        placeholders = self.imgs[:n]
        how = rng.random()
        if how < 0.5:
            body = placeholders
        elif how < 0.7:
            body = placeholders[:rng.randrange(n + 1)]          # too short
        elif how < 0.8:
            body = placeholders + self.imgs[n:n + rng.randint(1, 3)]   # too long
        elif how < 0.9:
            body = rng.sample(placeholders, len(placeholders))  # out of order
        else:
            body = list(placeholders)                           # a tag stuck in the middle
            body.insert(rng.randrange(len(body) + 1), rng.choice(self.specials))
        close = [t.eoi_token_id] if rng.random() < 0.9 else []
        return [t.boi_token_id, *body, *close]


# (weight, chunk maker); a chunk is one id or a short run of them
def _chunk_kinds(v: Vocabulary) -> list[tuple[int, Callable[[random.Random, Stream], list[int]]]]:
    return [
        (20, lambda r, s: [r.choice(v.specials)]),
        (15, lambda r, s: [r.choice(v.locs)]),
        (4, lambda r, s: [r.choice(v.extra_locs)] if s.extra_locs else r.choice(v.words[-6:])),
        (8, lambda r, s: [r.choice(v.imgs)]),
        (7, lambda r, s: v.image_run(r, s.num_img_tokens)),
        (5, lambda r, s: v.box(r, extra_locs=s.extra_locs)),
        (3, lambda r, s: v.box(r, r.choice([0, 1, 2, 3, 5, 8]), s.extra_locs)),
        (20, lambda r, s: r.choice(v.words)),
        (10, lambda r, s: [r.choice(v.text_ids)]),
        (3, lambda r, s: [r.choice(v.undecodable)]),
        (2, lambda r, s: r.choice(v.partial_chars)),
    ]


class StreamMaker:
    """Random `Stream` s with the weighting above; the same seed gives the same streams."""

    def __init__(self, vocabulary: Vocabulary, seed: int) -> None:
        self.rng = random.Random(seed)
        kinds = _chunk_kinds(vocabulary)
        self._weights = [w for w, _ in kinds]
        self._makers = [m for _, m in kinds]

    def size(self) -> tuple[int, int]:
        r = self.rng
        return r.choice([(1, 1), (1, 4000), (4000, 1), (r.randint(1, 4000), r.randint(1, 4000))])

    def __call__(self) -> Stream:
        r = self.rng
        stream = Stream(ids=(), open_box=r.random() < 0.2,
                        num_img_tokens=r.choice([64, 64, 64, 4, 1]),
                        finish_reason=r.choice(FINISH_REASONS * 2 + (None,) * 4),
                        extra_locs=r.random() < 0.3,
                        input_sizes=tuple(self.size() for _ in range(r.choice([0, 0, 1, 2]))),
                        generated_sizes=tuple(self.size() for _ in range(r.randint(0, 2))))
        ids: list[int] = []
        for maker in r.choices(self._makers, self._weights, k=min(int(r.expovariate(1 / 12)), 80)):
            ids.extend(maker(r, stream))
        chunks = tuple(r.randrange(len(ids) + 1) for _ in range(r.randint(0, 3)))
        return replace(stream, ids=tuple(ids), chunks=chunks)


# --- running, shrinking, reporting -----------------------------------------------------------

def failure(stream: Stream, tokenizer: SeedXTokenizer) -> str | None:
    """How ``stream`` fails (``crash: TypeError`` or the name of the first broken property)."""
    try:
        broken = check_stream(stream, tokenizer)
    except Exception as exc:  # noqa: BLE001 - a crash is what we are looking for
        return f"crash: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return f"violation: {broken[0]}" if broken else None


def _signature(how: str) -> str:
    kind, _, rest = how.partition(": ")
    return f"{kind}: {rest.split(':', 1)[0]}"


def shrink(stream: Stream, tokenizer: SeedXTokenizer, how: str) -> Stream:
    """A shorter stream failing the same way: drop runs of ids while the failure stays."""
    want = _signature(how)
    best = replace(stream, chunks=())
    if failure(best, tokenizer) is None or _signature(failure(best, tokenizer)) != want:
        best = stream
    step = max(len(best.ids) // 2, 1)
    while step >= 1:
        i, changed = 0, False
        while i < len(best.ids):
            trial = replace(best, ids=best.ids[:i] + best.ids[i + step:])
            got = failure(trial, tokenizer)
            if got is not None and _signature(got) == want:
                best, changed = trial, True
            else:
                i += step
        if not changed:
            step //= 2
    return best


def run(n: int, seed: int, *, report: Callable[[str], None] = print,
        max_reports: int = 10) -> dict[str, float]:
    tokenizer = load_tokenizer()
    make = StreamMaker(Vocabulary(tokenizer), seed)
    crashes = violations = tokens = reported = 0
    seen: set[str] = set()
    start = time.perf_counter()
    for k in range(n):
        stream = make()
        tokens += len(stream.ids)
        how = failure(stream, tokenizer)
        if how is None:
            continue
        if how.startswith("crash"):
            crashes += 1
        else:
            violations += 1
        sig = _signature(how)
        if sig not in seen and reported < max_reports:
            seen.add(sig)
            reported += 1
            small = shrink(stream, tokenizer, how)
            report(f"stream {k}: {how}\n  minimal: {small.reproducer()}\n"
                   f"  now: {failure(small, tokenizer)}")
    elapsed = time.perf_counter() - start
    return dict(streams=n, tokens=tokens, crashes=crashes, violations=violations,
                seconds=elapsed, streams_per_second=n / elapsed if elapsed else float("inf"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="streams to run (100000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    args = parser.parse_args(argv)
    s = run(args.n, args.seed)
    print(f"streams {s['streams']}, tokens {s['tokens']}, crashes {s['crashes']}, "
          f"violations {s['violations']}, {s['streams_per_second']:.0f} streams/s "
          f"({s['seconds']:.1f} s, seed {args.seed})")
    return 1 if s["crashes"] or s["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
