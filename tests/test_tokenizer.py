"""``SeedXTokenizer`` against the ids of the official slow LlamaTokenizer (transformers 4.30.2).

Every expectation comes from ``fixtures/golden_tokenizer/cases.json`` (see its README), which was
generated once with 4.30.2; nothing here is re-derived from the implementation under test.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil

import pytest

from conftest import GOLDEN_TOKENIZER
from core_models.tokenizer import (TINY_TOKENIZER_DIR, TOKENIZER_FILES, SeedXTokenizer,
                                   StreamDecoder)

GOLDEN = json.loads((GOLDEN_TOKENIZER / "cases.json").read_text(encoding="utf-8"))
CASES = GOLDEN["cases"]
SEGMENT_CASES = [c for c in CASES if "segments" in c]
DECODE_CHECKS = [(c["name"], key, c[ids_key], c[key])
                 for c in CASES
                 for key, ids_key in (("decoded", "ids"), ("decoded_generate", "generate_kept_ids"))
                 if key in c]
# The README's rule (b): <s>/</s>/<unk> right after text, whose 4.30.2 space lands before the text.
RULE_B_CASES = {"out_text_eos", "literal_eos", "literal_bos_eos_spaces", "literal_unk"}


def names(cases):
    return [c["name"] for c in cases]


@pytest.fixture(scope="module")
def tok() -> SeedXTokenizer:
    return SeedXTokenizer.from_pretrained(GOLDEN_TOKENIZER)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def normalise(text: str, tokens) -> str:
    """The README's normalisation N: drop whitespace touching a token, strip both ends."""
    alternatives = "|".join(map(re.escape, sorted(tokens, key=len, reverse=True)))
    return re.sub(rf"\s*({alternatives})\s*", r"\1", text).strip()


# ---------------------------------------------------------------- the files and the ids in them

@pytest.mark.parametrize("folder", [GOLDEN_TOKENIZER, TINY_TOKENIZER_DIR], ids=["golden", "tiny"])
def test_tokenizer_files_are_the_recorded_ones(folder):
    for name, meta in GOLDEN["tokenizer_files"].items():
        assert (folder / name).stat().st_size == meta["bytes"], name
        assert sha256(folder / name) == meta["sha256"], name
    assert set(GOLDEN["tokenizer_files"]) == set(TOKENIZER_FILES)


def test_special_ids(tok):
    special = GOLDEN["special_ids"]
    assert (tok.bos_token, tok.bos_token_id) == (special["bos_token"], special["bos_id"])
    assert (tok.eos_token, tok.eos_token_id) == (special["eos_token"], special["eos_id"])
    assert (tok.unk_token, tok.unk_token_id) == (special["unk_token"], special["unk_id"])
    assert (tok.pad_token, tok.pad_token_id) == (special["pad_token"], special["pad_id"])
    # SEED-X prompts are [bos] + encode(text), which is what 4.30.2's add_special_tokens gave.
    example = special["encode_with_special_tokens_example"]
    assert [tok.bos_token_id] + tok.encode(example["text"]) == example["ids"]


def test_vocab_layout(tok):
    vocab = GOLDEN["vocab"]
    named = vocab["named_ids"]
    assert len(tok) == vocab["len_tokenizer"]
    assert tok.vocab_size == vocab["sentencepiece_pieces"]
    assert min(tok.added_tokens.values()) == vocab["added_first_id"]
    assert max(tok.added_tokens.values()) == vocab["added_last_id"]
    assert {t: tok.added_tokens[t] for t in named} == named
    assert tok.boi_token_id == named["<img>"] and tok.eoi_token_id == named["</img>"]
    assert tok.bop_token_id == named["<patch>"] and tok.eop_token_id == named["</patch>"]
    assert tok.box_start_token_id == named["<box_start>"]
    assert tok.box_end_token_id == named["<box_end>"]
    assert len(tok.img_token_ids) == 100 and len(tok.loc_token_ids) == 224
    assert tok.img_token_ids[0] == named["<img_00000>"]
    assert tok.img_token_ids[63] == named["<img_00063>"]
    assert tok.img_token_ids[-1] == named["<img_00099>"]
    assert tok.loc_token_ids[0] == named["<loc-0>"] and tok.loc_token_ids[-1] == named["<loc-223>"]
    assert tok.convert_ids_to_tokens(tok.loc_token_ids[:3]) == ["<loc-0>", "<loc-1>", "<loc-2>"]
    byte_ids = vocab["byte_fallback_ids"]
    assert tok.convert_ids_to_tokens(byte_ids.values()) == list(byte_ids)
    assert tok.convert_ids_to_tokens([vocab["metaspace_piece_id"]]) == ["▁"]


def test_img_token_string(tok):
    block = "<img>" + tok.img_token_string(64) + "</img>"
    assert tok.img_token_string(2) == "<img_00000><img_00001>"
    assert tok.encode(block) == [tok.boi_token_id, *tok.img_token_ids[:64], tok.eoi_token_id]
    with pytest.raises(ValueError):
        tok.img_token_string(101)


# ---------------------------------------------------------------- encode

@pytest.mark.parametrize("case", CASES, ids=names(CASES))
def test_encode_matches_4_30_2(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.convert_ids_to_tokens(case["ids"]) == case["tokens"]


@pytest.mark.parametrize("case", SEGMENT_CASES, ids=names(SEGMENT_CASES))
def test_encode_segments_matches_training(tok, case):
    assert [tok.encode(s) for s in case["segments"]] == case["segment_ids"]
    concat = tok.encode_segments(case["segments"])
    assert concat == [i for ids in case["segment_ids"] for i in ids]
    assert (concat == tok.encode(case["text"])) == case["segment_ids_concat_equals_ids"]


def test_encode_rejects_non_text(tok):
    with pytest.raises(TypeError):
        tok.encode(["Hello"])


# ---------------------------------------------------------------- decode

@pytest.mark.parametrize("name,key,ids,expected", DECODE_CHECKS,
                         ids=[f"{n}-{k}" for n, k, _, _ in DECODE_CHECKS])
def test_decode_matches_4_30_2(tok, name, key, ids, expected):
    assert tok.decode(ids) == expected


@pytest.mark.parametrize("case", [c for c in CASES if "generate_kept_ids" in c],
                         ids=names(c for c in CASES if "generate_kept_ids" in c))
def test_generate_kept_ids_rule(tok, case):
    """ContinuousLVLM.generate drops every <img> and the 64 placeholders before every </img>."""
    ids = case["ids"]
    dropped = {k for k, i in enumerate(ids) if i == tok.boi_token_id}
    for end in (k for k, i in enumerate(ids) if i == tok.eoi_token_id):
        dropped.update(range(end - 64, end))
    assert [i for k, i in enumerate(ids) if k not in dropped] == case["generate_kept_ids"]


def test_decode_rejects_unknown_ids(tok):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5, len(tok)])


# ---------------------------------------------------------------- streaming

def stream(tok, ids, eager):
    decoder = StreamDecoder(tok, eager=eager)
    deltas = [decoder.put(i) for i in ids]
    return deltas, decoder.flush()


STREAM_IDS = [(c["name"], c["ids"]) for c in CASES] + [
    (c["name"] + "-generate", c["generate_kept_ids"]) for c in CASES if "generate_kept_ids" in c]


@pytest.mark.parametrize("name,ids", STREAM_IDS, ids=[n for n, _ in STREAM_IDS])
def test_stream_deltas_concatenate_to_decode(tok, name, ids):
    deltas, tail = stream(tok, ids, eager=False)
    assert "".join(deltas) + tail == tok.decode(ids)
    # Nothing is held back once an added token has arrived.
    for k, i in enumerate(ids):
        if i in tok.added_tokens.values():
            assert "".join(deltas[:k + 1]) == tok.decode(ids[:k + 1])

    eager_deltas, eager_tail = stream(tok, ids, eager=True)
    eager_text = "".join(eager_deltas) + eager_tail
    special = [*tok.added_tokens, *tok.special_tokens]
    assert normalise(eager_text, special) == normalise(tok.decode(ids), special)
    assert (eager_text == tok.decode(ids)) == (name not in RULE_B_CASES)


@pytest.mark.parametrize("name", ["plain", "emoji", "out_multiline", "unicode_latin"])
def test_eager_stream_is_live_and_never_shows_half_characters(tok, name):
    ids = next(c["ids"] for c in CASES if c["name"] == name)
    deltas, tail = stream(tok, ids, eager=True)
    final = tok.decode(ids)
    assert "\ufffd" not in final
    for k in range(len(ids)):
        shown = "".join(deltas[:k + 1])
        assert final.startswith(shown) and "\ufffd" not in shown
        # Everything up to the last complete character is shown at once.
        assert shown == tok.decode(ids[:k + 1]).rstrip("\ufffd")
    assert "".join(deltas) + tail == final


def test_stream_on_random_ids(tok):
    """Any id sequence, including broken byte sequences and specials anywhere."""
    rng = random.Random(0)
    special = [*tok.added_tokens, *tok.special_tokens]
    for _ in range(300):
        ids = [rng.randrange(len(tok)) if rng.random() < 0.5 else rng.randrange(260)
               for _ in range(rng.randint(0, 25))]
        deltas, tail = stream(tok, ids, eager=False)
        assert "".join(deltas) + tail == tok.decode(ids), ids
        deltas, tail = stream(tok, ids, eager=True)
        assert normalise("".join(deltas) + tail, special) == normalise(tok.decode(ids), special)


# ---------------------------------------------------------------- loading and saving

@pytest.fixture
def folder_copy(tmp_path):
    for name in TOKENIZER_FILES:
        shutil.copy(GOLDEN_TOKENIZER / name, tmp_path / name)
    return tmp_path


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_save_pretrained_round_trips_byte_identical(tok, tmp_path):
    tok.save_pretrained(tmp_path / "saved")
    for name in TOKENIZER_FILES:
        assert sha256(tmp_path / "saved" / name) == GOLDEN["tokenizer_files"][name]["sha256"], name
    again = SeedXTokenizer.from_pretrained(tmp_path / "saved")
    case = next(c for c in CASES if c["name"] == "seedx_i_comprehension_5v")
    assert again.encode(case["text"]) == case["ids"]


def test_missing_folder_or_file(tmp_path, folder_copy):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SeedXTokenizer.from_pretrained(tmp_path / "nope")
    (folder_copy / "added_tokens.json").unlink()
    with pytest.raises(FileNotFoundError, match="added_tokens.json"):
        SeedXTokenizer.from_pretrained(folder_copy)


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update({"<img_00000>": 1330}), "each used once"),          # gap at 1000
    (lambda d: d.update({"<box_end>": 1328}), "each used once"),            # duplicate id
    (lambda d: d.update({"<box_end>": 999}), "collide"),                    # base vocabulary
    (lambda d: d.update({"<box_end>": "1329"}), "integer ids"),
    (lambda d: d.update({"<0x0A>": 1330}), "already SentencePiece pieces"),
    (lambda d: d.pop("<box_end>"), "lacks '<box_end>'"),                    # not SEED-X
], ids=["gap", "duplicate", "collision", "string_id", "piece", "missing_token"])
def test_malformed_added_tokens(folder_copy, change, message):
    edit_json(folder_copy / "added_tokens.json", change)
    with pytest.raises(ValueError, match=message):
        SeedXTokenizer.from_pretrained(folder_copy)


def test_malformed_json_and_unsupported_config(folder_copy):
    (folder_copy / "added_tokens.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SeedXTokenizer.from_pretrained(folder_copy)
    shutil.copy(GOLDEN_TOKENIZER / "added_tokens.json", folder_copy / "added_tokens.json")
    # 4.30.2 would run its clean-up pass on decode output (its default when the key is absent).
    edit_json(folder_copy / "tokenizer_config.json", lambda d: d.pop("clean_up_tokenization_spaces"))
    with pytest.raises(ValueError, match="clean_up_tokenization_spaces"):
        SeedXTokenizer.from_pretrained(folder_copy)


def test_plain_string_special_token_strips_like_an_added_token(folder_copy):
    """4.30.2 strips around a special token unless it is an AddedToken (read from 4.30.2's
    ``tokenize``; no golden case covers it, the SEED-X files give bos/eos/unk as AddedTokens)."""
    edit_json(folder_copy / "special_tokens_map.json", lambda d: d.update(bos_token="<s>"))
    plain = SeedXTokenizer.from_pretrained(folder_copy)
    assert plain.encode("a <s> b") == plain.encode("a") + [plain.bos_token_id] + plain.encode("b")
    assert plain.encode("a </s> b") != plain.encode("a") + [plain.eos_token_id] + plain.encode("b")


# ---------------------------------------------------------------- the tiny stack's tokenizer

def test_tiny_tokenizer_loads_and_encodes_a_seedx_prompt():
    tiny = SeedXTokenizer.from_pretrained(TINY_TOKENIZER_DIR)
    assert len(tiny) == GOLDEN["vocab"]["len_tokenizer"]
    case = next(c for c in CASES if c["name"] == "seedx_i_t2i_forced_boi")
    assert [tiny.bos_token_id] + tiny.encode(case["text"]) == [tiny.bos_token_id] + case["ids"]
    assert tiny.encode(case["text"])[-1] == tiny.boi_token_id
