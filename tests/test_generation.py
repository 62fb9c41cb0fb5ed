"""Step-wise generation against the golden greedy-generate fixture, plus the session mechanics."""

import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core_models.config import SeedXConfig
from core_models.generation import (Box, GenerationSession, ImageTokenForcing, decode, generate,
                                    parse_boxes)
from core_models.mllm import ContinuousLVLM

GOLDEN_MLLM = Path(__file__).parent / "fixtures" / "golden" / "mllm"
CONFIG = json.loads((GOLDEN_MLLM / "config.json").read_text())
CASES = list(CONFIG["generate_cases"])
LAYOUT = CONFIG["tiny_vocab_layout"]["special_token_ids"]
BOI, EOI, EOS = LAYOUT["<img>"], LAYOUT["</img>"], CONFIG["tiny_vocab_layout"]["eos"]


class TinyTokenizer:
    """The fixture's stand-in vocabulary (config.json ``tiny_vocab_layout``), decoding like its text."""

    eos_token_id = EOS
    boi_token_id = BOI
    eoi_token_id = EOI
    img_token_ids = list(range(LAYOUT["<img_00000>"], LAYOUT["<img_00099>"] + 1))
    loc_token_ids = list(range(LAYOUT["<loc-0>"], LAYOUT["<loc-223>"] + 1))
    box_start_token_id = LAYOUT["<box_start>"]
    box_end_token_id = LAYOUT["<box_end>"]

    def piece(self, i: int) -> str:
        if i in self.img_token_ids:
            return f"<img_{i - self.img_token_ids[0]:05d}>"
        if i in self.loc_token_ids:
            return f"<loc-{i - self.loc_token_ids[0]}>"
        named = {BOI: "<img>", EOI: "</img>", LAYOUT["<patch>"]: "<patch>", LAYOUT["</patch>"]: "</patch>",
                 self.box_start_token_id: "<box_start>", self.box_end_token_id: "<box_end>",
                 0: "<unk>", 1: "<s>", 2: "</s>"}
        return named.get(i, f"<t{i}>")

    def decode(self, ids):
        return "".join(self.piece(int(i)) for i in ids)


class Utf8Tokenizer(TinyTokenizer):
    """Plain ids decode as bytes: a lone lead byte shows as U+FFFD until its continuation arrives."""

    def decode(self, ids):
        out, raw = [], bytearray()
        for i in map(int, ids):
            if 3 <= i < 70:
                raw += bytes([0xC3]) if i == 30 else bytes([0xA9]) if i == 31 else bytes([97 + i % 26])
            else:
                out.append(raw.decode("utf-8", errors="replace"))
                raw = bytearray()
                out.append(self.piece(i))
        out.append(raw.decode("utf-8", errors="replace"))
        return "".join(out)


@pytest.fixture(scope="module")
def model():
    c = CONFIG
    config = SeedXConfig.from_dict(dict(
        vit=dict(output_dim=c["input_resampler"]["args"]["kv_dim"]), llm=c["llm"]["config"],
        input_resampler=c["input_resampler"]["args"], output_resampler=c["output_resampler"]["args"],
        agent=c["agent"]["args"],
        detokenizer_resampler=dict(embedding_dim=c["output_resampler"]["args"]["embed_dim"])))
    m = ContinuousLVLM.from_config(config).eval()
    m.load_state_dict(load_file(GOLDEN_MLLM / "weights.safetensors"), strict=True)
    return m


@pytest.fixture(scope="module")
def tok():
    return TinyTokenizer()


def load_case(case):
    return load_file(GOLDEN_MLLM / f"generate_{case}.safetensors")


def image_kwargs(d):
    if "input_image_embeds" not in d:
        return {}
    return dict(image_embeds=d["input_image_embeds"], embeds_cmp_mask=d["input_embeds_cmp_mask"],
                ids_cmp_mask=d["input_ids_cmp_mask"], patch_positions=d["input_patch_positions"])


def prefilled(model, tok, case, tokenizer=None):
    d = load_case(case)
    kw = image_kwargs(d)
    with torch.no_grad():
        embeds = model.embed_inputs(d["input_ids"], kw.get("image_embeds"), kw.get("patch_positions"),
                                    kw.get("ids_cmp_mask"), kw.get("embeds_cmp_mask"))
    session = GenerationSession(model, tokenizer or tok)
    session.prefill(d["input_ids"], embeds)
    return session, d


# --- fixture parity ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_generate_matches_fixture(model, tok, case):
    d, meta = load_case(case), CONFIG["generate_cases"][case]
    kw = image_kwargs(d)
    result = generate(model, tok, d["input_ids"], max_new_tokens=meta["max_new_tokens"],
                      record_logits=True, **kw)
    assert result.generated_ids == d["generated_ids"].tolist()
    torch.testing.assert_close(result.raw_logits, d["raw_logits_per_step"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(result.processed_scores, d["processed_scores_per_step"], atol=1e-4, rtol=1e-4)
    assert result.has_img_output == meta["has_img_output"]
    assert result.num_gen_imgs == meta["num_gen_imgs"]
    assert result.text == meta["text_after_masking_(tiny tokenizer decode)"]
    if meta["has_img_output"]:
        torch.testing.assert_close(result.img_gen_hidden_states, d["img_gen_hidden_states"],
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(result.img_gen_feat, d["img_gen_feat"], atol=1e-4, rtol=1e-4)
        assert all(image.well_formed for image in result.images)
    else:
        assert result.img_gen_feat is None
    assert set(result.to_official()) == {"text", "has_img_output", "img_gen_feat", "num_gen_imgs"}
    with torch.no_grad():
        embeds = model.embed_inputs(d["input_ids"], kw.get("image_embeds"), kw.get("patch_positions"),
                                    kw.get("ids_cmp_mask"), kw.get("embeds_cmp_mask"))
    torch.testing.assert_close(embeds, d["prompt_inputs_embeds"], atol=1e-5, rtol=1e-5)


def test_model_generate_method_delegates(model, tok):
    d = load_case("t2i_seedx_i")
    result = model.generate(tok, d["input_ids"], max_new_tokens=12)
    assert result.generated_ids == d["generated_ids"][:12].tolist()


def test_image_token_forcing_rule(tok):
    rule = ImageTokenForcing.from_tokenizer(tok, 64)
    scores = torch.full((400,), -3.0)
    scores[5] = 1.5
    forced = rule.process(BOI, scores)
    assert forced[tok.img_token_ids[0]] == 11.5 and rule.forced_token(BOI) == tok.img_token_ids[0]
    assert rule.forced_token(tok.img_token_ids[63]) == EOI and rule.forced_token(EOI) is None
    assert rule.forced_token(tok.img_token_ids[64]) is None  # only the first Q image tokens chain
    free = rule.process(5, scores)
    assert torch.all(free[tok.img_token_ids[:64]] == 0.0) and free[EOI] == 0.0
    assert free[BOI] == -3.0 and free[tok.img_token_ids[64]] == -3.0 and scores[EOI] == -3.0
    strict = ImageTokenForcing.from_tokenizer(tok, 64, suppress_with_neg_inf=True).process(5, scores)
    assert torch.isinf(strict[EOI]) and strict[BOI] == -3.0
    # HF LogitsProcessor signature, row by row
    batch = rule(torch.tensor([[1, BOI], [1, 5]]), torch.stack([scores, scores]))
    torch.testing.assert_close(batch, torch.stack([forced, free]))


# --- session mechanics ---------------------------------------------------------------------------
def test_multi_turn_keep_cache_equals_full_reprefill(model, tok):
    session, d = prefilled(model, tok, "t2i_seedx")
    turn1 = session.generate(120, record_logits=True)
    assert turn1.stop_reason == "eos" and turn1.generated_ids[-1] == EOS
    assert session.num_cached == len(session) - 1  # the EOS is pending, never run
    session.crop(-1)
    turn2_prompt = [35, 27, 50, 9, 14, 19, 20, 29, 13]
    session.prefill(turn2_prompt)
    turn2 = session.generate(20, record_logits=True)

    full_ids = d["input_ids"][0].tolist() + turn1.generated_ids[:-1] + turn2_prompt
    fresh = GenerationSession(model, tok)
    fresh.prefill(full_ids)  # the t2i prompt has no spliced image, token embeddings are exact
    reference = fresh.generate(20, record_logits=True)
    assert turn2.generated_ids == reference.generated_ids
    torch.testing.assert_close(turn2.raw_logits, reference.raw_logits, atol=1e-5, rtol=1e-5)
    assert session.token_ids == fresh.token_ids
    torch.testing.assert_close(session.hidden_states, fresh.hidden_states, atol=1e-5, rtol=1e-5)


def test_crop_rolls_back_exactly(model, tok):
    session, _ = prefilled(model, tok, "comp_seedx_i_anyres")
    mark = len(session)
    first = session.generate(8, record_logits=True)
    session.prefill([35, 36])
    session.generate(5)
    session.crop(mark)
    assert len(session) == mark and session.num_cached == mark
    again = session.generate(8, record_logits=True)
    assert again.generated_ids == first.generated_ids
    torch.testing.assert_close(again.raw_logits, first.raw_logits, atol=0, rtol=0)
    with pytest.raises(ValueError):
        session.crop(len(session) + 1)


def test_clone_is_independent(model, tok):
    session, _ = prefilled(model, tok, "t2i_seedx_i")
    copy = session.clone()
    a = session.generate(6, record_logits=True)
    b = copy.generate(6, record_logits=True)
    assert a.generated_ids == b.generated_ids
    torch.testing.assert_close(a.raw_logits, b.raw_logits, atol=0, rtol=0)
    copy.crop(-3)
    assert len(session) == len(copy) + 3


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancellation_between_steps(model, tok, kind):
    session, _ = prefilled(model, tok, "t2i_seedx_i")
    start = len(session)
    stop = threading.Event()
    cancel = stop if kind == "event" else stop.is_set
    events = []
    for event in session.stream(120, cancel=cancel, rollback_on_cancel=(kind == "callable")):
        events.append(event)
        if len(events) == 5:
            stop.set()
    result = events[-1].result
    assert result.stop_reason == "cancelled" and len(result.generated_ids) == 5
    assert result.start_length == start
    assert len(session) == (start if kind == "callable" else start + 5)
    session.crop(result.start_length)
    assert len(session) == start


def test_force_image(model, tok):
    session, _ = prefilled(model, tok, "comp_seedx_i_anyres")
    events = list(session.stream(70, force_image=True))
    result = events[-1].result
    ids = result.generated_ids
    assert ids[0] == BOI and ids[1:65] == tok.img_token_ids[:64] and ids[65] == EOI
    assert result.num_gen_imgs == 1 and result.images[0].well_formed
    assert result.img_gen_feat.shape == (1, 64, 32)
    (closing,) = [e for e in events if e.image is not None]
    assert closing.token_id == EOI and closing.step == 65
    assert [e.image_progress for e in events[:3]] == [(0, 64), (1, 64), (2, 64)]
    assert result.text.startswith("</img>") and "<img>" not in result.text


def test_max_new_tokens_cutting_an_image_run_is_reported(model, tok):
    result = generate(model, tok, load_case("t2i_seedx")["input_ids"], max_new_tokens=30)
    assert result.image_truncated and not result.has_img_output and result.stop_reason == "length"
    assert result.text == tok.decode(tok.img_token_ids[:30])  # kept in the text, as upstream
    assert not generate(model, tok, load_case("t2i_seedx")["input_ids"], max_new_tokens=66).image_truncated


@pytest.mark.parametrize("case", CASES)
def test_streamed_deltas_join_to_final_text(model, tok, case):
    session, _ = prefilled(model, tok, case)
    shown = ""
    for event in session.stream(CONFIG["generate_cases"][case]["max_new_tokens"]):
        shown = event.text if event.replace_text else shown + event.text
        # placeholders of an open image run never reach the screen
        assert "<img_00063>" not in shown
    expected = CONFIG["generate_cases"][case]["text_after_masking_(tiny tokenizer decode)"]
    assert shown == event.result.text == expected


def test_streamer_holds_back_incomplete_characters(model):
    utf8 = Utf8Tokenizer()
    session = GenerationSession(model, utf8)
    session.prefill([1, 40, 41])
    deltas = []
    # script the tokens: a lone lead byte (30) then its continuation (31) make one "é"
    scripted = iter([40, 30, 31, 41, EOS])
    original = session.next_token_logits

    def next_logits():
        logits = original()
        forced = torch.full_like(logits, -1e4)
        forced[next(scripted)] = 5.0
        return forced

    session.next_token_logits = next_logits
    for event in session.stream(10):
        assert not event.replace_text
        deltas.append(event.text)
    assert "".join(deltas) == event.result.text == "oé" + "p</s>"
    assert all("\ufffd" not in d for d in deltas)


def test_sampling_is_reproducible_and_keeps_forced_runs(model, tok):
    runs = []
    for _ in range(2):
        session, _ = prefilled(model, tok, "t2i_seedx")
        gen = torch.Generator().manual_seed(123)
        runs.append(session.generate(75, do_sample=True, temperature=1.0, top_p=0.9, generator=gen))
    assert runs[0].generated_ids == runs[1].generated_ids
    assert runs[0].generated_ids[:65] == tok.img_token_ids[:64] + [EOI]



# --- the decode loop over another token source (what the replay kit plugs in) -------------------
class ScriptedTokens:
    """A ``TokenSource`` that plays fixed ids; image ``k`` gets features filled with ``k``."""

    def __init__(self, ids):
        self.ids, self.asked = ids, []

    def next_token(self, step):
        self.asked.append(step)
        return self.ids[step]

    def image_states(self, index, end, q):
        return torch.zeros(q, 4), torch.full((q, 2), float(index))

    def scores(self):
        return None, None


class IdsOnly:
    """The least a session must be for the loop: ids, a tokenizer, rollback."""

    def __init__(self, prompt):
        self.token_ids, self.tokenizer = list(prompt), TinyTokenizer()

    def crop(self, n):
        del self.token_ids[n:]


def test_decode_runs_any_token_source():
    tok = TinyTokenizer()
    rule = ImageTokenForcing.from_tokenizer(tok, 64)
    run = [BOI, *tok.img_token_ids[:64], EOI]
    session = IdsOnly([7])
    events = list(decode(session, ScriptedTokens([8, *run, EOS, 9]), rule, 100))
    result = events[-1].result
    assert result.stop_reason == "eos" and result.generated_ids == [8, *run, EOS]
    assert session.token_ids == [7, 8, *run, EOS]
    (image,) = result.images
    assert image.well_formed and image.eoi_index == 66 and not image.features.any()
    assert result.text == tok.decode([8, EOI, EOS]) == "".join(e.text for e in events)

    cut = list(decode(IdsOnly([7]), ScriptedTokens(run), rule, 10))[-1].result
    assert cut.stop_reason == "length" and cut.image_truncated and not cut.images

    stop, source, session = threading.Event(), ScriptedTokens(run), IdsOnly([7])
    for event in decode(session, source, rule, 100, cancel=stop, rollback_on_cancel=True):
        if event.step == 2:
            stop.set()
    assert event.result.stop_reason == "cancelled" and source.asked == [0, 1, 2]
    assert session.token_ids == [7]
    with pytest.raises(RuntimeError, match="empty session"):
        next(decode(IdsOnly([]), ScriptedTokens(run), rule, 1))


# --- boxes ---------------------------------------------------------------------------------------
def test_parse_boxes_tolerates_bad_output():
    text = ("a red car<box_start><loc-10><loc-20><loc-30><loc-40><box_end> and a dog "
            "<box_start> <loc-1> <loc-2> <box_end>, sky<box_start><loc-5><loc-6><loc-7><loc-300><box_end>"
            " tail<box_start><loc-9>")
    boxes = parse_boxes(text)
    assert [(b.phrase, b.bins, b.closed, b.valid) for b in boxes] == [
        ("a red car", [10, 20, 30, 40], True, True),
        ("and a dog", [1, 2], True, False),
        (", sky", [5, 6, 7, 300], True, False),
        ("tail", [9], False, False),
    ]
    assert boxes[0].to_xyxy(224, 448) == pytest.approx((-5.0, 0.0, 25.0, 80.0))  # core_models.boxes
    assert boxes[1].to_xyxy(224, 224) is None
    # SEED-X pretrained grounding: the prompt ends with <box_start>
    (opened,) = parse_boxes("<loc-100><loc-100><loc-50><loc-50><box_end>]]", open_box=True)
    assert opened.valid and opened.phrase == ""
    assert parse_boxes("<loc-1><box_end> text") == []
    assert Box([1, 2, 3, 4], "x", True).valid
