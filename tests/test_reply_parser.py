"""ReplyParser: SEED-X reply ids -> text deltas, boxes, image slots, with warnings, never a crash.

Two tokenizers run every test: a stub with the SEED-X id layout (1000 SentencePiece pieces, the
330 added tokens at 1000..1329) whose decode is plain SentencePiece and *refuses* tag ids, so the
parser is tested on its own and is shown never to hand a tag to ``decode``; and the real tiny
``SeedXTokenizer`` (skipped if that module is missing), so the two agree in practice.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm

from seedx_agent.reply_parser import (
    ImageSlot, ParsedReply, ReplyParser, box_phrase, parse_reply,
)
from seedx_agent.types import BoxFound, BoxPart, ImageStarted, TextDelta, TextPart

GOLDEN_TOKENIZER = Path(__file__).parent / "fixtures" / "golden_tokenizer"
CASES = {c["name"]: c for c in json.loads((GOLDEN_TOKENIZER / "cases.json").read_text())["cases"]}

SP = spm.SentencePieceProcessor(model_file=str(GOLDEN_TOKENIZER / "tokenizer.model"))
UNK, BOS, EOS = 0, 1, 2
IMG0, BOI, EOI, BOP, EOP, LOC0, BOX_START, BOX_END = 1000, 1100, 1101, 1102, 1103, 1104, 1328, 1329
PLACEHOLDERS = list(range(IMG0, IMG0 + 64))
IMAGE_RUN = [BOI, *PLACEHOLDERS, EOI]


def loc(k: int) -> int:
    return LOC0 + k


def words(text: str) -> list[int]:
    """One text chunk encoded as the 4.30 tokenizer does it (own dummy prefix)."""
    return SP.encode(text)


class StubTokenizer:
    """The SEED-X id layout with a SentencePiece-only decode that rejects every non-text id."""

    bos_token_id, eos_token_id, unk_token_id = BOS, EOS, UNK
    boi_token_id, eoi_token_id, bop_token_id, eop_token_id = BOI, EOI, BOP, EOP
    box_start_token_id, box_end_token_id = BOX_START, BOX_END
    img_token_ids = list(range(IMG0, IMG0 + 100))
    loc_token_ids = list(range(LOC0, LOC0 + 224))

    def decode(self, ids: list[int]) -> str:
        bad = [i for i in ids if not 3 <= i < 1000]
        if bad:
            raise ValueError(f"stub decode got non-text ids {bad}")
        return SP.decode(list(ids))


def _tiny_tokenizer():
    tokenizer_module = pytest.importorskip("core_models.tokenizer")
    return tokenizer_module.SeedXTokenizer.from_pretrained(tokenizer_module.TINY_TOKENIZER_DIR)


@pytest.fixture(scope="module", params=["stub", "tiny"])
def tok(request):
    return StubTokenizer() if request.param == "stub" else _tiny_tokenizer()


def run(ids, tokenizer, **kw) -> tuple[list, ParsedReply]:
    """Feed ids one by one; return (events, reply) and check the streaming invariants."""
    finish_reason = kw.pop("finish_reason", None)
    parser = ReplyParser(tokenizer, **kw)
    events = []
    for i in ids:
        events.extend(parser.feed(i))
    reply = parser.finish(finish_reason)
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(deltas) == reply.text == parser.text
    assert all(d and not d.endswith("\ufffd") for d in deltas)
    assert [e.box for e in events if isinstance(e, BoxFound)] == reply.boxes
    assert [e.index for e in events if isinstance(e, ImageStarted)] == list(range(reply.image_runs))
    assert [s.run_index for s in reply.image_slots] == list(range(reply.image_runs))
    assert parse_reply(ids, tokenizer, finish_reason=finish_reason, **kw) == reply
    return events, reply


def shape(reply: ParsedReply) -> list:
    """Parts as plain tuples, for readable expectations."""
    out = []
    for p in reply.parts:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, BoxPart):
            out.append(("box", p.bins, p.phrase))
        else:
            out.append(("image", p.run_index, p.complete))
    return out


# --- SEED-X replies from the golden fixture ------------------------------------------------------

GOLDEN_EXPECTED = {
    "out_box_only": [("box", (12, 40, 100, 7), None)],
    "out_box_in_sentence": ["The car is at", ("box", (12, 40, 100, 7), "The car"), "."],
    "out_two_boxes": ["There are two dogs:", ("box", (0, 223, 1, 222), "There are two dogs"),
                      " and", ("box", (50, 60, 70, 80), None), "."],
    "out_box_newlines": ["Mask:", ("box", (12, 40, 100, 7), "Mask"), " Done."],
    "out_box_eos": [("box", (1, 2, 3, 4), None)],
    "out_image": ["Here is the edited image.", ("image", 0, True)],
    "out_image_eos": ["Sure! Here's an image of a sunset over the sea 🌅.", ("image", 0, True)],
    "out_image_only": [("image", 0, True)],
    "out_image_then_text": [("image", 0, True), "It shows a cat."],
    "out_two_images": ["First:", ("image", 0, True), " Second:", ("image", 1, True)],
    "out_text_eos": ["The image shows a red car parked on the road."],
    "out_multiline": ["1. A cat\n2. A dog\n\nBoth are sleeping 🐱."],
}


@pytest.mark.parametrize("name", sorted(GOLDEN_EXPECTED))
def test_golden_replies(tok, name):
    ids = CASES[name]["ids"]
    _, reply = run(ids, tok)
    assert shape(reply) == GOLDEN_EXPECTED[name]
    assert reply.warnings == ()
    assert reply.finish_reason == ("eos" if ids[-1] == EOS else "max_new_tokens")
    for slot in reply.image_slots:   # the runtime reads hidden-state rows [end-64, end)
        assert ids[slot.start] == BOI and ids[slot.end] == EOI
        assert ids[slot.end - 64:slot.end] == PLACEHOLDERS and slot.num_tokens == 64


def test_golden_text_matches_official_display_text(tok):
    """Our text is the official tag-stripped text, modulo whitespace next to tags."""
    for name in ("out_text_eos", "out_multiline", "out_image_then_text"):
        case = CASES[name]
        official = case.get("decoded_generate") or case.get("decoded") or case["text"]
        stripped = " ".join(re.sub(r"<[^>]*>", " ", official).split())
        assert " ".join(run(case["ids"], tok)[1].text.split()) == stripped


def test_pretrained_grounding_continuation(tok):
    ids = CASES["out_pretrained_grounding_continuation"]["ids"]
    _, reply = run(ids, tok, open_box=True, open_box_phrase="a car")
    assert shape(reply) == [("box", (110, 95, 60, 33), "a car"), "]]"]
    assert reply.warnings == ()
    # Without open_box the locs are strays, reported once, with a hint.
    _, reply = run(ids, tok)
    assert reply.boxes == [] and reply.text == "]]"
    assert len(reply.warnings) == 2
    assert "4 <loc-…> token(s) outside a box" in reply.warnings[0]
    assert "open_box=True" in reply.warnings[0]
    assert "<box_end> without <box_start>" in reply.warnings[1]


def test_streaming_is_incremental(tok):
    events, _ = run(CASES["out_box_in_sentence"]["ids"], tok)
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TextDelta"] * 4 + ["BoxFound", "TextDelta"]
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert deltas == ["The", " car", " is", " at", "."]
    parser = ReplyParser(tok)
    assert parser.feed(BOI) == [ImageStarted(index=0)]       # known before any placeholder


# --- box phrases -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,phrase", [
    ("The car is at", "The car"),
    ("The red car is located at", "The red car"),
    ("There are two dogs:", "There are two dogs"),
    ("Sure. The cat can be found at", "The cat"),
    ("Mask:\n", "Mask"),
    (" and", None),
    ("", None),
    ("and the dog (", "the dog"),
    ("a car [[", "a car"),
    ("Here is the bounding box of the umbrella:", "Here is the bounding box of the umbrella"),
])
def test_box_phrase(text, phrase):
    assert box_phrase(text) == phrase


# --- malformed streams -------------------------------------------------------------------------

BOX_A = [BOX_START, loc(1), loc(2), loc(3), loc(4), BOX_END]


def test_unclosed_box_at_end(tok):
    _, reply = run(words("The car is at") + [BOX_START, loc(1), loc(2), loc(3)], tok)
    assert shape(reply) == ["The car is at"]
    assert reply.finish_reason == "max_new_tokens"
    assert "not closed when the reply ended (max_new_tokens)" in reply.warnings[0]
    assert "[1, 2, 3]" in reply.warnings[0]
    _, reply = run([BOX_START, loc(1), loc(2), loc(3), loc(4), EOS], tok)
    assert reply.boxes == [] and "not closed at </s>" in reply.warnings[0]


def test_nested_box_start_restarts_the_box(tok):
    _, reply = run(words("A dog") + [BOX_START, loc(9), BOX_START, loc(1), loc(2), loc(3), loc(4),
                                      BOX_END], tok)
    assert shape(reply) == ["A dog", ("box", (1, 2, 3, 4), "A dog")]
    assert len(reply.warnings) == 1 and "nested <box_start>" in reply.warnings[0]


def test_too_few_and_too_many_locs(tok):
    _, reply = run([BOX_START, loc(1), loc(2), loc(3), BOX_END] + words("ok"), tok)
    assert shape(reply) == ["ok"]
    assert "3 <loc-…> token(s) [1, 2, 3], needs 4" in reply.warnings[0]
    _, reply = run([BOX_START, *map(loc, (1, 2, 3, 4, 5)), BOX_END], tok)
    assert shape(reply) == [("box", (1, 2, 3, 4), None)]
    assert reply.boxes[0].warnings == reply.warnings
    assert "kept the first 4" in reply.warnings[0]


def test_stray_locs_and_box_end(tok):
    _, reply = run(words("Look") + [loc(5), loc(6)] + words("here") + [BOX_END], tok)
    assert reply.text == "Look here" and reply.boxes == []
    assert "ignored 2 <loc-…> token(s) outside a box" in reply.warnings[0]
    assert "ignored 1 <box_end> without <box_start>" in reply.warnings[1]
    assert reply.parts[0].warnings == reply.warnings   # carried by the text part they broke


def test_non_loc_tokens_inside_a_box(tok):
    # whitespace-only text and input-only tokens are skipped, the box survives
    _, reply = run([BOX_START, loc(1), words(" ")[0], loc(2), BOP, loc(3), loc(4), BOX_END], tok)
    assert shape(reply) == [("box", (1, 2, 3, 4), None)]
    assert len(reply.boxes[0].warnings) == 2 and len(reply.warnings) == 2
    # real text ends the box, and the text is kept
    _, reply = run([BOX_START, loc(1), loc(2)] + words("oops") + [loc(3), BOX_END], tok)
    assert reply.boxes == [] and reply.text == "oops"
    assert "interrupted by text" in reply.warnings[0]
    # a placeholder / </img> / <s> / <unk> inside a box are ignored
    _, reply = run([BOX_START, loc(1), IMG0, EOI, BOS, UNK, loc(2), loc(3), loc(4), BOX_END], tok)
    assert len(reply.boxes) == 1 and len(reply.warnings) == 4
    # <img> inside a box: the box is dropped, the image run proceeds
    _, reply = run([BOX_START, loc(1)] + IMAGE_RUN, tok)
    assert shape(reply) == [("image", 0, True)] and "interrupted by <img>" in reply.warnings[0]


def test_placeholders_outside_an_image_run(tok):
    _, reply = run(words("Hi") + PLACEHOLDERS + [EOI] + words("there"), tok)
    assert shape(reply) == ["Hi there"] and reply.image_runs == 0
    assert reply.warnings[0].startswith(
        "ignored 64 image placeholder token(s) outside an <img> run")
    assert reply.warnings[1].startswith("ignored 1 </img> without <img>")


def test_image_run_cut_off(tok):
    ids = words("Here you go.") + [BOI] + PLACEHOLDERS[:40]
    _, reply = run(ids, tok, finish_reason="max_new_tokens")
    assert shape(reply) == ["Here you go.", ("image", 0, False)]
    slot = reply.image_slots[0]
    assert slot.num_tokens == 40 and slot.end is None and slot.start == len(ids) - 41
    assert "cut off when the reply ended (max_new_tokens) after 40 of 64" in slot.warnings[0]
    _, reply = run([BOI] + PLACEHOLDERS[:10] + [EOS], tok)
    assert "cut off at </s>" in reply.warnings[0] and reply.finish_reason == "eos"


@pytest.mark.parametrize("n", [0, 63, 65])
def test_image_run_with_wrong_count(tok, n):
    placeholders = (PLACEHOLDERS + [IMG0 + 64])[:n]
    _, reply = run([BOI, *placeholders, EOI], tok)
    assert shape(reply) == [("image", 0, False)]
    assert f"has {n} placeholder tokens, expected 64" in reply.warnings[0]


def test_image_run_interrupted_or_odd(tok):
    _, reply = run([BOI] + PLACEHOLDERS[:5] + words("hello"), tok)
    assert shape(reply) == [("image", 0, False), "hello"]
    assert "interrupted by token" in reply.warnings[0]
    _, reply = run([BOI] + PLACEHOLDERS[:5] + IMAGE_RUN, tok)
    assert shape(reply) == [("image", 0, False), ("image", 1, True)]
    _, reply = run([BOI, BOP] + PLACEHOLDERS[::-1] + [EOP, EOI], tok)
    assert shape(reply) == [("image", 0, True)]   # same features; the order is only reported
    assert len(reply.image_slots[0].warnings) == 3 and "out of order" in reply.warnings[1]
    _, reply = run([BOI] + PLACEHOLDERS + [BOX_START, *BOX_A[1:]], tok)
    assert shape(reply) == [("image", 0, False), ("box", (1, 2, 3, 4), None)]


def test_patch_tokens_are_ignored(tok):
    _, reply = run(words("a") + [BOP, EOP] + words("b"), tok)
    assert shape(reply) == ["a b"]
    assert reply.warnings == ("ignored 2 <patch>/</patch> token(s) (input-only tokens) "
                              "(from token 1)",)


def test_eos_ends_the_reply(tok):
    parser = ReplyParser(tok)
    parser.feed_many(words("Done."))
    assert parser.feed(EOS) == [] and parser.done
    assert parser.feed_many(words("more") + BOX_A) == []
    reply = parser.finish()
    assert shape(reply) == ["Done."] and reply.finish_reason == "eos"
    assert reply.warnings == (f"ignored {len(words('more')) + 6} token(s) after </s>",)
    assert parser.finish() is reply and parser.feed(5) == []


def test_bos_and_unk_in_output(tok):
    _, reply = run([BOS] + words("a") + [UNK] + words("b"), tok)
    assert reply.text == "a b"
    assert "<s> (BOS)" in reply.warnings[0] and "<unk>" in reply.warnings[1]


def test_undecodable_id(tok):
    _, reply = run(words("a") + [5000] + words("b"), tok)
    assert reply.text == "a b" and "cannot decode" in reply.warnings[0]


def test_multibyte_characters_stream_whole(tok):
    ids = words("sea 🌅 now")
    events, reply = run(ids, tok)
    assert reply.text == "sea 🌅 now" and reply.warnings == ()
    assert not any("\ufffd" in e.text for e in events)
    _, reply = run(words("sea 🌅")[:-1], tok)   # cut inside the emoji's bytes
    assert reply.text == "sea"
    assert "unfinished multi-byte character" in reply.warnings[0]


def test_separator_rules(tok):
    _, reply = run(words("Look (") + BOX_A + words("here") + BOX_A + words(", ok"), tok)
    assert reply.text == "Look (here, ok"
    _, reply = run(BOX_A + words("Start"), tok)
    assert reply.text == "Start"   # nothing to join to


def test_reply_round_trips_through_json(tok):
    ids = words("A car") + BOX_A + words("and") + [BOI] + PLACEHOLDERS[:3] + [EOI, UNK]
    _, reply = run(ids, tok)
    assert ParsedReply.model_validate_json(reply.model_dump_json()) == reply
    assert isinstance(reply.parts[-1], ImageSlot)


# --- fuzz --------------------------------------------------------------------------------------

def test_random_streams_never_raise(tok):
    rng = random.Random(1234)
    specials = [UNK, BOS, EOS, BOI, EOI, BOP, EOP, BOX_START, BOX_END, 5000]
    text_ids = words("The car is at the left. Sure! 🌅 café\n dogs: ]]")
    for trial in range(300):
        ids = []
        for _ in range(rng.randrange(0, 60)):
            r = rng.random()
            if r < 0.25:
                ids.append(rng.choice(specials))
            elif r < 0.45:
                ids.append(loc(rng.randrange(224)))
            elif r < 0.55:
                ids.append(IMG0 + rng.randrange(100))
            elif r < 0.62:
                ids.extend(IMAGE_RUN)
            elif r < 0.7:
                ids.extend(BOX_A)
            else:
                ids.append(rng.choice(text_ids) if rng.random() < 0.7 else rng.randrange(3, 1000))
        _, reply = run(ids, tok, open_box=trial % 5 == 0)
        for name in ("<img", "</img>", "<loc-", "<box_", "<patch>", "</patch>", "</s>", "<unk>"):
            assert name not in reply.text
        assert all(len(b.bins) == 4 for b in reply.boxes)


def test_import_stays_torch_free():
    # only core_models' plain-Python rooms (the box encoding, atomic files) may come along
    code = ("import sys, seedx_agent.reply_parser; assert 'torch' not in sys.modules; "
            "heavy = {m for m in sys.modules if m.startswith('core_models.')} "
            "- {'core_models.boxes', 'core_models.files'}; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
