"""Multi-turn sessions on the tiny preset: images, history, edits, KV cache, failures, events.

Turns that only need *some* reply run the real (untrained) LLM with a few tokens; turns that need
a particular reply (a box, an image, EOS at a known place) replay a recorded one with
``seedx_agent.testing``. Either way the template, cache bookkeeping, parser, de-tokenizer,
skills and events run for real. One runtime serves the module (building it takes seconds).
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from pydantic import BaseModel

from core_models.any_res import image_token_block
from core_models.generation import GenerationSession
from helpers import synthetic_image
from seedx_agent.hookspecs import hookimpl
from seedx_agent.runtime import Runtime
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import Skill
from seedx_agent.testing import Reply, image_features, replay_runtime, stop_replay
from seedx_agent.types import (EVENT_ADAPTER, PART_ADAPTER, BoxPart, DenoiseStep, ErrorEvent,
                               ImageDone, ImagePart, ImageStarted, Notice, TextDelta, TextPart,
                               TurnDone, parts_to_content_blocks)

Q = 64


@pytest.fixture
def replay(rt):
    """``replay(*replies)``: the module's runtime replays these replies, for this test only."""
    yield lambda *replies: replay_runtime(replies, runtime=rt)
    stop_replay(rt)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def events_of(session, *args, **kwargs):
    return list(session.turn(*args, **kwargs))


def done_of(events) -> TurnDone:
    assert isinstance(events[-1], TurnDone) and sum(isinstance(e, TurnDone) for e in events) == 1
    return events[-1]


def of_type(events, cls):
    return [e for e in events if isinstance(e, cls)]


def reply_ids(session) -> list[tuple[int, ...]]:
    return [t.context.reply_ids for t in session.history]


# --- the test kit itself ---------------------------------------------------------------------------

def test_testing_module_imports_without_torch():
    code = "import sys, seedx_agent.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_reply_builder_writes_seedx_tokens(rt):
    tok = rt.tokenizer
    ids = Reply().text("The car is at").box(112, 80, 40, 30).text(".").image().eos().token_ids(tok)
    text = tok.encode("The car is at")
    assert ids[:len(text)] == text
    box = ids[len(text):len(text) + 6]
    assert box == [tok.box_start_token_id, *(tok.loc_token_ids[b] for b in (112, 80, 40, 30)),
                   tok.box_end_token_id]
    assert ids[-Q - 3:] == [tok.boi_token_id, *list(tok.img_token_ids)[:Q], tok.eoi_token_id,
                            tok.eos_token_id]
    assert Reply().tokens("<loc-7>", 5).token_ids(tok) == [tok.loc_token_ids[7], 5]
    with pytest.raises(ValueError, match="bins"):
        Reply().box(0, 0, 0, 224)
    assert image_features(3).equal(image_features(3)) and not image_features(3).equal(image_features(4))


def test_replay_runs_dry_with_a_clear_error(rt, replay):
    replay(Reply().text("only one").eos())
    session = rt.open_session()
    assert done_of(events_of(session, "first")).finish_reason == "eos"
    events = events_of(session, "second")
    assert done_of(events).finish_reason == "error"
    (error,) = of_type(events, ErrorEvent)
    assert "no recorded reply left" in error.message and "replay.push" in error.message
    assert [t.status for t in session.history] == ["done", "failed"]

    # a stored turn's reply ids replay as they are (its EOS was cropped: put it back)
    rt.replay.push([*session.history[0].context.reply_ids, rt.tokenizer.eos_token_id])
    assert session.ask("third").parts[0].text == "only one" and len(rt.replay) == 0


# --- images and history --------------------------------------------------------------------------

def test_any_number_of_images_of_any_size_in_any_turn(rt):
    session = rt.open_session(max_new_tokens=3)
    wide, tall, photo = (synthetic_image(800, 200, 1), synthetic_image(150, 450, 2),
                         synthetic_image(640, 480, 3))
    first = session.ask("Compare these two.", [wide, tall])
    second = session.ask("And this one?", [png_bytes(photo)])
    third = session.ask("Which was the widest?")
    for done in (first, second, third):
        assert done.finish_reason in ("eos", "max_new_tokens")
    assert [(p.width, p.height) for p in first.parts if isinstance(p, ImagePart)] == [(800, 200), (150, 450)]
    assert [(p.width, p.height) for p in second.parts if isinstance(p, ImagePart)] == [(640, 480)]
    contexts = [t.context for t in session.history]
    assert [len(c.image_ids) for c in contexts] == [2, 1, 0]  # inputs are not re-attached
    # every view of every image is in the prompt: 4:1 and 1:3 pictures get 2 tiles + global
    views = sum(rt.encode_image(im, i, contexts[0].grids).num_views
                for im, i in zip((wide, tall), contexts[0].image_ids))
    assert views == 6
    assert session.history[0].prompt_tokens > views * (Q + 2)
    assert session.cached_tokens == sum(t.prompt_tokens + t.reply_tokens for t in session.history)


def test_generated_image_stays_in_history_and_a_later_question_attaches_it(rt, replay):
    tok = rt.tokenizer
    replay(Reply().text("Here is a cat.").image(seed=1).eos(),
           Reply().text("The cat is at").box(112, 112, 56, 112).text(".").eos(),
           Reply().text("Something else.").eos())
    session = rt.open_session()
    drawn = session.ask("Draw a cat.")
    (image,) = [p for p in drawn.parts if isinstance(p, ImagePart)]
    assert image.role == "generated" and (image.width, image.height) == (32, 32)
    # the <img> run the model produced stays in the context, as it was produced
    run = session.history[0].context.reply_ids
    assert tok.boi_token_id in run and run[run.index(tok.boi_token_id) + Q + 1] == tok.eoi_token_id

    asked = session.ask("Where is the cat?")
    turn = session.history[1]
    assert turn.request.image_ids == () and turn.context.image_ids == (image.image_id,)
    (box,) = [p for p in asked.parts if isinstance(p, BoxPart)]
    assert box.target_image == image.image_id and box.target_kind == "generated"
    assert box.pixel_xyxy == (12.0, 8.0, 20.0, 24.0)

    session.ask("Tell me a joke.", about_image=False)
    assert session.history[2].context.image_ids == ()


def test_force_image_switch_makes_an_image(rt):
    tok = rt.tokenizer
    session = rt.open_session()
    events = events_of(session, "A red square.", force_image=True, max_new_tokens=Q + 4,
                       num_inference_steps=2, seed=7)
    done = done_of(events)
    assert of_type(events, ImageStarted) == [ImageStarted(index=0)]
    assert [(e.step, e.total) for e in of_type(events, DenoiseStep)] == [(1, 2), (2, 2)]
    (image,) = [e.image for e in of_type(events, ImageDone)]
    assert image in done.parts and image.role == "generated"
    assert (image.provenance.variant, image.provenance.detokenizer_stage, image.provenance.seed,
            image.provenance.num_inference_steps) == ("seed_x_i", 1, 7, 2)
    ids = session.history[0].context.reply_ids
    assert ids[0] == tok.boi_token_id and list(ids[1:Q + 1]) == list(tok.img_token_ids)[:Q]


def test_force_image_on_a_text_recording_prepends_a_forced_run(rt, replay):
    replay(Reply().text("Done.").eos())
    session = rt.open_session()
    done = session.ask("Draw.", force_image=True)
    assert [p.type for p in done.parts] == ["image", "text"]


# --- edit turns ------------------------------------------------------------------------------------

def test_edit_turns_run_the_edit_variant_single_turn_on_the_latest_image(rt, replay):
    tok = rt.tokenizer
    replay(Reply().text("A street.").eos(),
           Reply().text("Sure.").image(seed=5).eos(),
           Reply().text("Bluer.").image(seed=6).eos(),
           Reply().text("It is blue.").eos())
    session = rt.open_session()
    photo = synthetic_image(640, 320, 11)
    session.ask("What is this?", [photo])
    source = session.history[0].parts[0]
    cached = session.cached_tokens

    edited = session.ask("Make it red.", edit=True, seed=3, num_inference_steps=2,
                         guidance_scale=6.0, image_guidance_scale=1.2)
    (red,) = [p for p in edited.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert red.width == 2 * red.height  # the source's 2:1, not the de-tokenizer's square
    assert red.provenance.model_dump(exclude={"weights_fingerprint", "schema_version"}) == dict(
        model="tiny", variant="seed_x_edit", seed=3, num_inference_steps=2, guidance_scale=6.0,
        image_guidance_scale=1.2, scheduler="EulerDiscreteScheduler", detokenizer_stage=2,
        parents=(source.image_id,))
    turn = session.history[1]
    assert turn.variant == "seed_x_edit" and turn.request.edit
    assert turn.context.in_context is False and turn.context.grids == ("1x1",)
    # its own single-turn prompt: BOS + first-turn template, the source as one 1x1 image (2 views)
    prompt = [tok.bos_token_id] + tok.encode(
        "[INST] " + image_token_block(2, Q) + "Make it red. [/INST]\n")
    assert turn.prompt_tokens == len(prompt)
    assert session.cached_tokens == cached  # the conversation's cache is untouched

    bluer = session.ask("Make it bluer.", edit=True)
    (blue,) = [p for p in bluer.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert blue.provenance.parents == (red.image_id,)  # the latest output, not the photo
    assert blue.width == 2 * blue.height and blue.provenance.seed == 42

    session.ask("What colour is it now?")
    assert session.history[3].context.image_ids == (blue.image_id,)


def test_edit_turn_needs_exactly_one_image(rt, replay):
    replay()
    session = rt.open_session()
    events = events_of(session, "Make it red.", edit=True)
    assert "nothing to edit" in of_type(events, ErrorEvent)[0].message
    events = events_of(session, "Make it red.", [synthetic_image(64, 64, 1),
                                                 synthetic_image(64, 32, 2)], edit=True)
    assert "exactly one image" in of_type(events, ErrorEvent)[0].message
    assert [(t.status, t.context) for t in session.history] == [("failed", None)] * 2


# --- the KV cache ----------------------------------------------------------------------------------

def test_kept_cache_prefills_only_each_turns_new_tokens(rt, monkeypatch):
    prefilled: list[int] = []
    real_prefill = GenerationSession.prefill

    def spy(self, input_ids, inputs_embeds=None):
        prefilled.append(len(input_ids[0]) if hasattr(input_ids, "shape") else len(input_ids))
        return real_prefill(self, input_ids, inputs_embeds)

    monkeypatch.setattr(GenerationSession, "prefill", spy)
    session = rt.open_session(max_new_tokens=5)
    sizes = []
    for text, images in (("Look.", [synthetic_image(448, 448, 4)]), ("And now?", []),
                         ("Also this.", [synthetic_image(300, 100, 5)])):
        before, prefilled[:] = session.cached_tokens, []
        session.ask(text, images)
        turn = session.history[-1]
        assert prefilled == [turn.prompt_tokens]  # only the new turn, in one call
        assert session.cached_tokens == before + turn.prompt_tokens + turn.reply_tokens
        sizes.append(turn.prompt_tokens)
    assert sizes[1] < 20  # "\n[INST] And now? [/INST]\n", not the history again


def test_eos_is_cropped_between_turns(rt, replay):
    tok = rt.tokenizer
    replay(Reply().text("Hello there.").eos(), Reply().text("Again.").eos())
    session = rt.open_session()
    session.ask("Hi.")
    first = session.history[0]
    assert first.finish_reason == "eos" and tok.eos_token_id not in first.context.reply_ids
    assert first.reply_tokens == len(tok.encode("Hello there."))  # the EOS is not kept
    assert session.cached_tokens == first.prompt_tokens + first.reply_tokens
    session.ask("Hi again.")
    second = session.history[1]
    assert session.cached_tokens == (first.prompt_tokens + first.reply_tokens
                                     + second.prompt_tokens + second.reply_tokens)
    assert second.prompt_tokens == len(tok.encode("\n[INST] Hi again. [/INST]\n"))


SCRIPT = (("Describe this picture.", (640, 320, 21), {}),
          ("Now this tall one.", (150, 450, 22), {}),
          ("Draw it.", None, dict(force_image=True, max_new_tokens=Q + 4, num_inference_steps=1)),
          ("What did you draw?", None, {}))


def run_script(rt, first_image=(640, 320, 21), **options):
    session = rt.open_session(max_new_tokens=8, **options)
    for i, (text, image, kwargs) in enumerate(SCRIPT):
        image = first_image if i == 0 else image
        session.ask(text, [synthetic_image(*image)] if image else [], **kwargs)
    return session


def test_kept_cache_gives_the_same_tokens_as_a_full_reprefill(rt, monkeypatch):
    caches = []
    new_generation = Runtime.new_generation
    monkeypatch.setattr(Runtime, "new_generation",
                        lambda self, agent: caches.append(new_generation(self, agent)) or caches[-1])
    kept = run_script(rt, keep_cache=True)
    kept_cache = caches[-1]
    fresh = run_script(rt, keep_cache=False)
    fresh_cache = caches[-1]
    assert [t.status for t in kept.history] == ["done"] * len(SCRIPT)
    assert kept.history[3].context.image_ids  # the drawn image was attached to the question
    assert reply_ids(kept) == reply_ids(fresh)

    # The untrained model's greedy tokens barely depend on the history, so equal tokens alone
    # would prove little: the caches must hold the same ids and predict the same next token
    # distribution, to float rounding, while a different first image moves it measurably.
    assert kept_cache is not fresh_cache and kept_cache.token_ids == fresh_cache.token_ids
    logits = kept_cache.next_token_logits()
    assert (logits - fresh_cache.next_token_logits()).abs().max() < 1e-5
    other = run_script(rt, first_image=(640, 320, 99))
    assert other.history[0].context.image_ids != kept.history[0].context.image_ids
    assert (logits - caches[-1].next_token_logits()).abs().max() > 1e-4


# --- cancellation ----------------------------------------------------------------------------------

def test_cancel_from_a_callback_mid_stream_rolls_the_turn_back(rt, replay):
    replay(Reply().text("Hi.").eos(),
           Reply().text("one two three four five six").eos(),
           Reply().text("Fine.").eos())
    session = rt.open_session()
    session.ask("Hello.", [synthetic_image(200, 100, 6)])
    before = session.cached_tokens
    cancel = threading.Event()

    def on_event(event):
        if isinstance(event, TextDelta):
            cancel.set()

    events = events_of(session, "Count.", cancel=cancel, on_event=on_event)
    assert len(of_type(events, TextDelta)) == 1  # stopped at the next token
    assert done_of(events).finish_reason == "cancelled"
    assert session.cached_tokens == before
    assert session.history[1].status == "cancelled" and not session.history[1].context.in_context
    session.ask("Again.")
    assert session.cached_tokens == before + session.history[2].prompt_tokens + \
        session.history[2].reply_tokens


def test_cancelled_turn_loses_nothing(rt):
    reference = rt.open_session(max_new_tokens=6)
    reference.ask("First.", [synthetic_image(320, 160, 7)])
    reference.ask("Second.")

    session = rt.open_session(max_new_tokens=6)
    session.ask("First.", [synthetic_image(320, 160, 7)])
    cancel = threading.Event()
    seen = []
    events = events_of(session, "Interrupted.", [synthetic_image(100, 300, 8)], cancel=cancel,
                       on_event=lambda e: (seen.append(e), cancel.set()))
    assert len(seen) > 1 and done_of(events).finish_reason == "cancelled"
    session.ask("Second.")
    assert session.history[2].context.reply_ids == reference.history[1].context.reply_ids


def test_cancel_during_denoising_rolls_the_turn_back(rt, replay):
    replay(Reply().text("Hi.").eos(), Reply().text("Here:").image().eos(), Reply().text("Ok.").eos())
    session = rt.open_session()
    session.ask("Hello.")
    before = session.cached_tokens
    cancel = threading.Event()

    def on_event(event):
        if isinstance(event, DenoiseStep):
            cancel.set()

    events = events_of(session, "Draw.", cancel=cancel, on_event=on_event, num_inference_steps=25)
    assert done_of(events).finish_reason == "cancelled"
    assert of_type(events, DenoiseStep) and not of_type(events, ImageDone)
    assert session.cached_tokens == before
    assert not session.history[1].context.in_context
    session.ask("Again.")
    assert session.cached_tokens == before + session.history[2].prompt_tokens + \
        session.history[2].reply_tokens


# --- failures --------------------------------------------------------------------------------------

class Noop(BaseModel):
    pass


class Boom(Skill):
    name = "boom"
    consumes = frozenset({"box"})  # chosen only when named: these replies have no boxes
    action_types = {"noop": Noop}

    def to_actions(self, reply):
        raise RuntimeError("kaboom")

    def run(self, action, context):
        raise AssertionError("never runs")


@pytest.fixture
def boom_skill(rt, monkeypatch):
    from seedx_agent.plugins import pm

    class Plugin:
        @hookimpl
        def register_skills(self, register):
            register(Boom())

    plugin = Plugin()
    pm.register(plugin, name="test-session-boom")
    monkeypatch.setattr(rt, "_skill_host", SkillHost(pm))
    yield
    pm.unregister(plugin)


def test_failed_turns_give_an_error_and_the_session_survives(rt, replay, boom_skill):
    replay(Reply().text("Fine.").eos(),
           Reply().text("Boom.").eos(),
           Reply().image(features=image_features(0, Q, 7)).eos(),  # features of the wrong width
           Reply().text("Still here.").eos())
    session = rt.open_session()
    session.ask("Hi.", [synthetic_image(120, 90, 9)])
    cached, turns = session.cached_tokens, len(session.history)

    def assert_failed(events, source, words):
        nonlocal turns
        done = done_of(events)
        (error,) = of_type(events, ErrorEvent)
        assert error.source == source and words in error.message
        # the result says why, and the failed turn is in the history, outside the context
        assert done.finish_reason == "error" and done.errors == (error,) and not done.ok
        turns += 1
        failed = session.history[-1]
        assert len(session.history) == turns and failed.index == done.turn_index
        assert failed.status == "failed" and failed.errors == (error,) and failed.context is None
        assert session.cached_tokens == cached

    assert_failed(events_of(session, "Look.", [b"definitely not an image"]), "input", "image 1")
    absurd = Image.new("RGB", (3000, 20))
    assert_failed(events_of(session, "Look.", [synthetic_image(64, 64), absurd]), "input",
                  "aspect ratio")
    assert_failed(events_of(session, "Use a skill.", skill="no_such_skill"), "skills",
                  "no_such_skill")

    # a skill that raises: an error event, but the turn itself completes and is kept
    events = events_of(session, "Explode.", skill="boom")
    (error,) = of_type(events, ErrorEvent)
    assert error.source == "skill:boom" and "kaboom" in error.message
    assert done_of(events).finish_reason == "eos" and session.history[-1].errors == (error,)
    cached, turns = session.cached_tokens, len(session.history)

    # the model's side fails (here: recorded features of the wrong shape): rolled back
    assert_failed(events_of(session, "Draw."), "model", "shape")

    still = session.ask("Still there?")
    assert still.finish_reason == "eos" and still.ok
    assert len(session.history) == turns + 1
    # no failed turn was sent to the model again: the cache grew by the new turn alone
    last = session.history[-1]
    assert session.cached_tokens == cached + last.prompt_tokens + last.reply_tokens


# --- context eviction ------------------------------------------------------------------------------

def per_token_bytes(rt) -> int:
    cfg = rt.stack.agent.llm.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    return (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim + cfg.hidden_size) * 4


def test_old_turns_leave_the_context_with_a_notice(rt, replay):
    replay(*[Reply().text(f"Answer {i}.").eos() for i in range(5)])
    budget = 500
    session = rt.open_session(cache_memory_limit=budget * per_token_bytes(rt), max_new_tokens=16)
    notices = []
    for i in range(5):
        events = events_of(session, f"Question {i}.", [synthetic_image(448, 448, 30 + i)])
        assert done_of(events).finish_reason == "eos"
        notices += of_type(events, Notice)
        assert session.cached_tokens + 16 <= budget
    assert notices and "turn 0 left the model's context" in notices[0].message
    assert len(session.history) == 5  # still in the transcript
    assert session.history[0].parts[0].type == "image"


def test_a_turn_too_big_for_the_context_fails_without_evicting(rt, replay):
    replay(Reply().text("Short.").eos())
    session = rt.open_session(cache_memory_limit=250 * per_token_bytes(rt), max_new_tokens=8)
    session.ask("Hi.")
    cached = session.cached_tokens
    images = [synthetic_image(448, 448, 40 + i) for i in range(3)]  # 3 x 2 views: > 250 tokens
    events = events_of(session, "Too much.", images)
    (error,) = of_type(events, ErrorEvent)
    assert error.source == "context" and not of_type(events, Notice)
    assert session.cached_tokens == cached and session.history[-1].status == "failed"


# --- ViT cache -------------------------------------------------------------------------------------

def test_vit_features_are_cached_by_image_content(rt, replay):
    replay(Reply().text("One.").eos(), Reply().text("Two.").eos())
    calls = []
    hook = rt.stack.vit.register_forward_hook(lambda *args: calls.append(1))
    try:
        picture = synthetic_image(333, 222, 50)
        size = rt.vit_cache_size
        session = rt.open_session()
        session.ask("First.", [picture])
        assert len(calls) == 1 and rt.vit_cache_size == size + 1
        # the same pixels from another source (and in another session): a cache hit
        rt.open_session().ask("Same picture, as PNG bytes.", [png_bytes(picture)])
        assert len(calls) == 1 and rt.vit_cache_size == size + 1
    finally:
        hook.remove()


# --- events and parts ------------------------------------------------------------------------------

def test_events_as_iterator_and_callbacks_round_trip_as_json(rt, replay):
    replay(Reply().text("A dog at").box(20, 30, 40, 50).text("and a picture:").image(seed=2).eos())
    session = rt.open_session()
    seen = []
    events = events_of(session, "Show me.", [synthetic_image(300, 200, 12)], on_event=seen.append,
                       num_inference_steps=2)
    assert events == seen
    types = [e.type for e in events]
    assert types.index("text_delta") < types.index("box") < types.index("image_started") \
        < types.index("denoise_step") < types.index("image_done") < types.index("turn_done")
    assert types.count("denoise_step") == 2 and types[-1] == "turn_done"
    for event in events:
        assert EVENT_ADAPTER.validate_json(event.model_dump_json()) == event
    done = done_of(events)
    assert [p.type for p in done.parts] == ["image", "text", "box", "text", "image"]
    for part in done.parts:
        assert PART_ADAPTER.validate_json(part.model_dump_json()) == part
    assert len(parts_to_content_blocks(list(done.parts))) == len(done.parts)
    assert "".join(e.text for e in of_type(events, TextDelta)) == \
        "".join(p.text for p in done.parts if isinstance(p, TextPart))


def test_malformed_recorded_streams_give_parts_with_warnings(rt, replay):
    replay(Reply().text("a cat").tokens("<box_start>", "<loc-10>", "<loc-20>").eos(),
           Reply().text("Here:").image().eos(),
           Reply().text("x").tokens("<loc-3>", "<img>", "<img_00000>", "</img>").text("y").eos(),
           Reply().text("fine").eos().text("ignored"))
    session = rt.open_session()

    unclosed = events_of(session, "Box?")
    assert done_of(unclosed).finish_reason == "eos"
    assert any("not closed" in n.message for n in of_type(unclosed, Notice))
    assert [p.type for p in done_of(unclosed).parts] == ["text"]

    cut = events_of(session, "Draw.", max_new_tokens=10)
    done = done_of(cut)
    assert done.finish_reason == "max_new_tokens" and not of_type(cut, ImageDone)
    broken = done.parts[-1]
    assert isinstance(broken, TextPart) and any("not produced" in w for w in broken.warnings)
    assert any("cut off" in w for w in broken.warnings)

    odd = done_of(events_of(session, "Odd."))
    assert [p.type for p in odd.parts] == ["text", "text", "text"]
    assert any("placeholder" in w for w in odd.parts[1].warnings)

    fine = done_of(events_of(session, "Fine?"))
    assert [p.text for p in fine.parts] == ["fine"]
    assert len(session.history) == 4


# --- grounding through the replay kit --------------------------------------------------------------

def test_recorded_box_reply_is_grounded_on_a_non_square_input(rt, replay, tmp_path):
    from seedx_agent.plugins import get_plugins
    from seedx_agent.store import SessionStore

    replay(Reply().text("The red car is at").box(112, 112, 56, 112).text(".").eos())
    store = SessionStore(tmp_path / "store")
    session = rt.open_session(store=store)
    photo = synthetic_image(640, 320, 13)
    events = events_of(session, "Where is the red car?", [photo])
    done = done_of(events)
    (box,) = [p for p in done.parts if isinstance(p, BoxPart)]
    assert box.bins == (112, 112, 56, 112) and box.phrase == "The red car"
    assert box.target_image == done.parts[0].image_id and box.target_kind == "input"
    assert box.pixel_xyxy == (240.0, 80.0, 400.0, 240.0)  # on 640x320, not on a 448 square

    if "grounding" not in [p["name"] for p in get_plugins()]:
        pytest.skip("the seedx_grounding plugin is not installed")
    (action,) = done.actions
    assert (action.skill, action.action) == ("grounding", "locate")
    assert action.payload["pixel_xyxy"] == [240.0, 80.0, 400.0, 240.0]
    out = tmp_path / "store" / "artifacts" / session.id / "turn-000" / "grounding"
    assert Image.open(out / "crop_00_the-red-car.png").size == (160, 160)
    assert (out / "coco.json").is_file() and list(out.glob("annotated_*.png"))
    assert store.turns(session.id)[0].actions == (action,)
    # the action event says what it did and where its files are; the turn keeps the paths
    (event,) = [e for e in events if e.type == "action_event"]
    assert event.summary.startswith("The red car: (240, 80) to (400, 240)")
    assert {Path(a).name for a in event.artifacts} >= {"crop_00_the-red-car.png", "coco.json"}
    assert all(Path(a).is_file() for a in event.artifacts) and done.artifacts == event.artifacts
    assert store.turns(session.id)[0].artifacts == event.artifacts


def test_a_follow_up_question_grounds_on_the_picture_of_an_earlier_turn(rt, replay, tmp_path):
    """The photo comes in turn 1, "Where is ...?" in turn 2 without a picture: the box is on
    that photo (its own pixels), and the grounding skill crops from it."""
    from seedx_agent.plugins import get_plugins

    replay(Reply().text("A car.").eos(),
           Reply().text("The red car is at").box(112, 112, 56, 112).text(".").eos(),
           Reply().text("Here it is:").image(seed=3).text("with").box(112, 112, 56, 56).eos())
    session = rt.open_session(artifact_dir=tmp_path / "artifacts")
    photo = synthetic_image(640, 320, 13)
    first = session.ask("What is this?", [photo])
    photo_id = first.parts[0].image_id
    done = session.ask("Where is the red car?", skill="grounding")
    (box,) = [p for p in done.parts if isinstance(p, BoxPart)]
    assert box.target_image == photo_id and box.target_kind == "input"
    assert box.pixel_xyxy == (240.0, 80.0, 400.0, 240.0)
    if "grounding" in [p["name"] for p in get_plugins()]:
        (action,) = done.actions
        assert action.payload["pixel_xyxy"] == [240.0, 80.0, 400.0, 240.0]
    # a reply that draws a picture: its boxes are on that picture, not on the old photo
    drawn = session.ask("Draw one and mark it.")
    (box,) = [p for p in drawn.parts if isinstance(p, BoxPart)]
    (made,) = [p for p in drawn.parts if isinstance(p, ImagePart) and p.role != "input"]
    assert box.target_image == made.image_id and box.target_kind == "generated"


def test_without_a_store_or_artifact_dir_artifacts_go_to_a_reported_directory(
        rt, replay, monkeypatch, tmp_path):
    """No temporary directory of the session's own: the artifacts land under the user dir, in
    the directory ``session.artifact_dir`` reports, and outlive nothing unexpectedly."""
    import tempfile

    from seedx_agent.plugins import get_plugins

    if "grounding" not in [p["name"] for p in get_plugins()]:
        pytest.skip("the seedx_grounding plugin is not installed")

    def refuse(*args, **kwargs):
        raise AssertionError("seedx_agent made a temporary directory")

    monkeypatch.setenv("SEEDX_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    replay(Reply().text("The dot is at").box(112, 112, 40, 40).text(".").eos())
    session = rt.open_session()
    assert session.artifact_dir == tmp_path / "home" / "artifacts" / session.id
    done = session.ask("Where is the dot?", [synthetic_image(200, 100, 3)], skill="grounding")
    assert done.ok and done.artifacts
    for path in done.artifacts:
        assert Path(path).is_file() and Path(path).is_relative_to(session.artifact_dir)


def test_a_bad_image_turn_is_recorded_failed_in_the_store(rt, tmp_path):
    from seedx_agent.store import SessionStore

    store = SessionStore(tmp_path / "store")
    session = rt.open_session(store=store)
    done = session.ask("What is this?", [b"not a picture at all"])
    (error,) = done.errors
    assert done.finish_reason == "error" and error.source == "input" and "image 1" in error.message
    (stored,) = store.turns(session.id)
    assert stored.status == "failed" and stored.errors == (error,)
    assert stored.request.text == "What is this?" and stored.context is None
    resumed = rt.open_session(store=store, session_id=session.id)
    assert resumed.history[0].status == "failed"
    assert resumed.ask("Hello?", max_new_tokens=3).ok  # never sent to the model again
    assert resumed.history[-1].context.image_ids == ()


def test_turn_options_are_one_model_from_keywords_to_the_detokenizer(rt, replay, monkeypatch):
    """``seed``, ``num_inference_steps`` and ``guidance_scale`` reach the de-tokenizer by name,
    unset ones come from the model's defaults, and provenance says the same."""
    from seedx_agent import RenderDefaults, TurnOptions

    seen = []
    adapter = rt.stack.detokenizer(1)
    real = adapter.generate

    def recording(**kwargs):
        seen.append({k: kwargs[k] for k in ("seed", "num_inference_steps", "guidance_scale")})
        return real(**kwargs)

    monkeypatch.setattr(adapter, "generate", recording)
    monkeypatch.setattr(rt, "render_defaults", RenderDefaults(seed=5, num_inference_steps=1,
                                                              guidance_scale=2.5))
    replay(Reply().image(seed=1).eos(), Reply().image(seed=2).eos())
    session = rt.open_session()
    first = session.ask("Draw.", options=TurnOptions(seed=11, num_inference_steps=2),
                        guidance_scale=5.0)
    second = session.ask("Again.")
    assert seen == [dict(seed=11, num_inference_steps=2, guidance_scale=5.0),
                    dict(seed=5, num_inference_steps=1, guidance_scale=2.5)]
    (drawn,) = [p for p in first.parts if isinstance(p, ImagePart)]
    assert (drawn.provenance.seed, drawn.provenance.num_inference_steps,
            drawn.provenance.guidance_scale) == (11, 2, 5.0)
    assert session.history[0].request.options == dict(seed=11, num_inference_steps=2,
                                                      guidance_scale=5.0)
    assert second.ok
    with pytest.raises(ValueError, match="guidance_scal"):
        session.ask("Typo.", guidance_scal=3.0)


def test_a_store_failure_is_reported_and_the_session_goes_on(rt, tmp_path, monkeypatch):
    from seedx_agent.store import SessionStore, StoreError

    store = SessionStore(tmp_path / "store")
    session = rt.open_session(store=store)
    real = store.append_turn

    def broken(record):
        raise StoreError("disk full")

    monkeypatch.setattr(store, "append_turn", broken)
    events = list(session.turn("hello", max_new_tokens=3))
    errors = [e for e in events if e.type == "error"]
    assert errors and errors[0].source == "store" and "disk full" in errors[0].message
    assert events[-1].type == "turn_done" and events[-1].finish_reason != "error"

    monkeypatch.setattr(store, "append_turn", real)
    events = list(session.turn("again", max_new_tokens=3))
    assert not [e for e in events if e.type == "error"]
    assert [t.index for t in store.turns(session.id)] == [0, 1]  # the lost turn was saved too
    assert len(session.history) == 2
