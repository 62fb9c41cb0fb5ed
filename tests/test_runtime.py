"""The runtime on the tiny preset: shared by sessions on threads, persistence, variants.

One runtime serves the module (building it takes seconds); the LLM runs for real with a few
tokens per turn.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest

from helpers import synthetic_image
from seedx_agent.hookspecs import hookimpl
from seedx_agent.runtime import Runtime
from seedx_agent.store import SessionStore
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.types import PART_ADAPTER, ImagePart


def reply_ids(session) -> list[tuple[int, ...]]:
    return [t.context.reply_ids for t in session.history]


def test_tiny_preset_says_it_is_untrained(rt):
    about = rt.describe()
    assert rt.untrained and about["untrained"] and about["model"] == "tiny"
    assert {"seed_x", "seed_x_i", "seed_x_edit"} <= set(about["variants"])
    assert rt.render_defaults.num_inference_steps == 4
    with pytest.raises(KeyError, match="unknown variant"):
        rt.open_session(variant="seed_x_nope")


def test_register_variants_runs_once_per_runtime(saved_tree):
    from seedx_agent.plugins import pm

    calls = []

    class Counter:
        @hookimpl
        def register_variants(self, register):
            calls.append(1)

    counter = Counter()
    pm.register(counter, name="test-count-variants")
    try:
        import seedx_agent

        seedx_agent.from_pretrained("tiny")
        assert calls == [1]
        Runtime.from_pretrained(saved_tree)
        assert calls == [1, 1]
    finally:
        pm.unregister(counter)


@pytest.fixture(scope="module")
def saved_tree(rt, tmp_path_factory):
    return rt.stack.save_pretrained(tmp_path_factory.mktemp("tree") / "tiny", stages=(1,))


# --- several sessions, one runtime -----------------------------------------------------------------

CONVERSATIONS = [
    [("What is this?", (320, 160, 1)), ("Is it red?", None), ("And this?", (100, 300, 2))],
    [("Describe it.", (448, 448, 3)), ("Shorter.", None), ("Compare.", (800, 200, 4))],
    [("Hello.", None), ("Look.", (640, 480, 5)), ("Why?", None)],
]


def converse(rt, script, results, key):
    session = rt.open_session(max_new_tokens=6)
    for text, image in script:
        session.ask(text, [synthetic_image(*image)] if image else [])
    results[key] = (reply_ids(session), session.cached_tokens)


def test_sessions_on_threads_share_a_runtime_without_interfering(rt):
    serial: dict[int, tuple] = {}
    for i, script in enumerate(CONVERSATIONS):
        converse(rt, script, serial, i)
    threaded: dict[int, tuple] = {}
    threads = [threading.Thread(target=converse, args=(rt, script, threaded, i))
               for i, script in enumerate(CONVERSATIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert threaded == serial


# --- persistence ---------------------------------------------------------------------------------

SCRIPT = [("Look at this.", dict(images=[(400, 300, 6)])),
          ("Draw it.", dict(force_image=True, max_new_tokens=70, num_inference_steps=1)),
          ("What is in your drawing?", {}),          # attaches the generated image
          ("And this one?", dict(images=[(120, 360, 7)]))]


def play(session, steps):
    for text, options in steps:
        options = dict(options)
        images = [synthetic_image(*i) for i in options.pop("images", [])]
        done = session.ask(text, images, **options)
        assert done.finish_reason in ("eos", "max_new_tokens")


@pytest.fixture
def spy_caches(monkeypatch):
    caches = []
    new_generation = Runtime.new_generation
    monkeypatch.setattr(Runtime, "new_generation",
                        lambda self, agent: caches.append(new_generation(self, agent)) or caches[-1])
    return caches


def test_resumed_session_continues_with_the_same_cache_state(rt, tmp_path, spy_caches):
    uninterrupted = rt.open_session(max_new_tokens=6)
    play(uninterrupted, SCRIPT)
    full_cache = spy_caches[-1]

    store = SessionStore(tmp_path / "store")
    stored = rt.open_session(store=store, max_new_tokens=6, title="resume me")
    play(stored, SCRIPT[:2])
    del stored  # the process "ends": only the store is left

    session_id = store.list_sessions()[-1].id
    resumed = rt.open_session(store=store, session_id=session_id, max_new_tokens=6)
    assert resumed.record.title == "resume me" and len(resumed.history) == 2
    play(resumed, SCRIPT[2:])
    assert reply_ids(resumed) == reply_ids(uninterrupted)
    assert resumed.history[2].context.image_ids == uninterrupted.history[2].context.image_ids
    assert spy_caches[-1].token_ids == full_cache.token_ids
    assert resumed.cached_tokens == uninterrupted.cached_tokens

    stored_turns = store.turns(session_id)
    assert [t.index for t in stored_turns] == [0, 1, 2, 3]
    for turn in stored_turns:
        for part in turn.parts:
            assert PART_ADAPTER.validate_json(part.model_dump_json()) == part


def test_fork_at_a_turn_and_export(rt, tmp_path):
    store = SessionStore(tmp_path / "store")
    original = rt.open_session(store=store, max_new_tokens=6)
    play(original, SCRIPT[:2])
    generated = [p for p in original.history[1].parts if isinstance(p, ImagePart)][0]

    fork_record = store.fork(original.id, at_turn=0)
    fork = rt.open_session(store=store, session_id=fork_record.id, max_new_tokens=6)
    assert fork.record.parent.session_id == original.id and fork.record.parent.turn_index == 0
    assert len(fork.history) == 1
    play(fork, SCRIPT[1:2])  # the same second turn on the same first turn: the same reply
    assert fork.history[1].context.reply_ids == original.history[1].context.reply_ids
    assert len(store.turns(original.id)) == 2

    out = store.export(original.id, tmp_path / "export")
    transcript = json.loads((out / "transcript.json").read_text())
    assert [t["index"] for t in transcript["turns"]] == [0, 1]
    assert transcript["session"]["id"] == original.id
    exported = {p.stem for p in (out / "images").iterdir()}
    assert generated.image_id in exported and original.history[0].request.image_ids[0] in exported


def test_turn_done_hook_sees_every_stored_turn(rt, tmp_path):
    from seedx_agent.plugins import pm

    seen = []

    class Observer:
        @hookimpl
        def turn_done(self, session, turn):
            seen.append((session.id, turn.index, turn.status))

    observer = Observer()
    pm.register(observer, name="test-runtime-observer")
    try:
        session = rt.open_session(store=SessionStore(tmp_path), max_new_tokens=3)
        session.ask("One.")
        session.ask("Two.", [b"not an image"])  # failed: stored as failed, observed
        session.ask("Three.")
    finally:
        pm.unregister(observer)
    assert seen == [(session.id, 0, "done"), (session.id, 1, "failed"), (session.id, 2, "done")]


# --- variants ------------------------------------------------------------------------------------

def test_a_kv_cache_follows_its_variant_through_residency_swaps(rt):
    """With one resident LLM, an edit turn unloads SEED-X-I; the next chat turn must decode on
    the reloaded SEED-X-I, not on the unloaded copy its old cache still points at."""
    loads = []

    def load(variant):  # a fresh copy per load, as a real release would
        loads.append(variant.name)
        return copy.deepcopy(rt.stack.agent)

    swapping = Runtime(rt.stack, name="tiny-swapping", placement=rt.placement,
                       variants=rt.variants, agent_loader=load, untrained=True)
    replay_runtime([Reply().text("A photo.").eos(), Reply().text("Edited.").image().eos(),
                    Reply().text("Still chatting.").eos()], runtime=swapping)
    seen_models = []
    replay_new = swapping.new_generation
    swapping.new_generation = lambda agent: (seen_models.append(agent), replay_new(agent))[1]
    try:
        session = swapping.open_session()
        session.ask("What is this?", [synthetic_image(200, 100, 8)])
        session.ask("Make it blue.", edit=True, num_inference_steps=1)
        assert swapping.resident_variants == ["seed_x_edit"]
        before = len(seen_models)
        session.ask("What changed?")
        assert swapping.resident_variants == ["seed_x_i"] and loads == ["seed_x_edit", "seed_x_i"]
        # the chat cache was rebuilt on the reloaded model (turn 0 replayed into it)
        assert seen_models[before:] == [swapping.agent("seed_x_i")]
        assert seen_models[before] is not rt.stack.agent
        assert session.history[2].context.in_context
    finally:
        stop_replay(swapping)
