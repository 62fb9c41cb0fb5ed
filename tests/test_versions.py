"""What the skills stand on: image versions and revert, ``version:N`` inputs, ``steps=N``, a
skill's turn-option wishes, ``model_reads_images`` and ``earlier_actions``.

All on the untrained tiny stack replaying recorded replies (``seedx_agent.testing``), so every
assertion is about what the session does with a reply, not about what a model would say.
"""

from __future__ import annotations

import json
import threading
from typing import ClassVar

import pytest
from pydantic import BaseModel

from helpers import synthetic_image
from seedx_agent import cli
from seedx_agent.hookspecs import hookimpl
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import ActionResult, Skill
from seedx_agent.store import SessionStore
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.types import ImagePart, Notice, TurnDone

FAST = {"num_inference_steps": 1}


@pytest.fixture
def replay(rt):
    yield lambda *replies: replay_runtime(replies, runtime=rt)
    stop_replay(rt)


def drawn(done: TurnDone) -> ImagePart:
    (image,) = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
    return image


def tree(session) -> list[tuple[int, int | None]]:
    return [(v.number, v.parent) for v in session.versions()]


# --- versions, revert and branching ------------------------------------------------------------

def test_an_edit_chain_is_a_tree_and_revert_branches_it(rt, replay, tmp_path):
    replay(*(Reply().text("Here.").image(seed=s).eos() for s in range(4)))
    store = SessionStore(tmp_path / "store")
    session = rt.open_session(store=store)
    poster = drawn(session.ask("Draw a poster.", **FAST))
    first = drawn(session.ask("Make it red.", edit=True, **FAST))
    second = drawn(session.ask("Make it bluer.", edit=True, **FAST))
    assert tree(session) == [(1, None), (2, 1), (3, 2)]
    assert session.working_image().image_id == second.image_id

    version = session.revert(2)
    assert version.image_id == first.image_id and session.working_image() == first
    branch = drawn(session.ask("Make it green.", edit=True, **FAST))
    assert branch.provenance.parents == (first.image_id,)  # edited version 2, not version 3
    assert tree(session) == [(1, None), (2, 1), (3, 2), (4, 2)]
    assert session.working_image().image_id == branch.image_id
    assert [v.image_id for v in session.versions()] == [
        poster.image_id, first.image_id, second.image_id, branch.image_id]

    # the revert is a recorded turn outside the model's context: resume and fork keep it
    revert_turn = session.history[3]
    assert revert_turn.request.revert_to == 2 and revert_turn.context is None
    resumed = rt.open_session(store=store, session_id=session.id)
    assert resumed.versions() == session.versions()
    assert resumed.working_image().image_id == branch.image_id
    fork = store.fork(session.id, at_turn=3)  # up to and including the revert
    forked = rt.open_session(store=store, session_id=fork.id)
    assert tree(forked) == [(1, None), (2, 1), (3, 2)]
    assert forked.working_image().image_id == first.image_id
    store.close()


def test_revert_to_a_version_the_session_lacks_is_a_lookup_error(rt, replay):
    replay(Reply().text("Here.").image(seed=1).eos())
    session = rt.open_session()
    with pytest.raises(LookupError, match="no version 1: this session has no versions yet"):
        session.revert(1)
    session.ask("Draw.", **FAST)
    with pytest.raises(LookupError, match="versions 1..1"):
        session.revert(5)
    assert len(session.history) == 1  # a refused revert records nothing


def test_version_n_is_an_image_input_and_an_unknown_one_an_input_error(rt, replay):
    replay(Reply().text("Here.").image(seed=1).eos(), Reply().text("A poster.").eos())
    session = rt.open_session()
    poster = drawn(session.ask("Draw.", **FAST))
    session.ask("What is it?", ["version:1"])
    assert session.history[1].context.image_ids == (poster.image_id,)

    done = session.ask("And this?", ["version:7"])
    (error,) = done.errors
    assert error.source == "input" and "no version 7" in error.message
    assert not done.ok and session.history[-1].status == "failed"


# --- steps=N -----------------------------------------------------------------------------------

def test_steps_run_recorded_turns_each_on_the_picture_before(rt, replay):
    replay(*(Reply().text(f"Step {k}.").image(seed=k).eos() for k in range(3)))
    session = rt.open_session()
    first = synthetic_image(80, 80, 5)
    events = list(session.turn("Continue the story.", [first], steps=3, **FAST))
    dones = [e for e in events if isinstance(e, TurnDone)]
    notices = [e.message for e in events if isinstance(e, Notice)]
    assert [d.turn_index for d in dones] == [0, 1, 2] and all(d.ok for d in dones)
    assert [n for n in notices if n.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    pictures = [drawn(d) for d in dones]
    # each step read the picture the step before drew
    inputs = [turn.context.image_ids[-1] for turn in session.history]
    assert inputs[1:] == [pictures[0].image_id, pictures[1].image_id]
    assert len(session.history) == 3


def test_cancelling_between_steps_stops_the_loop(rt, replay):
    replay(*(Reply().text(f"Step {k}.").image(seed=k).eos() for k in range(3)))
    session = rt.open_session()
    cancel = threading.Event()
    events = []
    for event in session.turn("Continue.", [synthetic_image(80, 80, 5)], steps=3, cancel=cancel,
                              **FAST):
        events.append(event)
        if isinstance(event, TurnDone):
            cancel.set()  # the user stops after the first step
    assert [e.turn_index for e in events if isinstance(e, TurnDone)] == [0]
    assert any(isinstance(e, Notice) and "stopped before step 2 of 3" in e.message for e in events)
    assert len(session.history) == 1


def test_a_script_with_steps_has_one_transcript_entry_per_step(rt, replay, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr("seedx_agent.cli.run.load_runtime", lambda *a: rt)
    script = tmp_path / "s.yaml"
    script.write_text("model: tiny\nnum_inference_steps: 1\nturns:\n"
                      "  - {text: Continue., images: ['synthetic:64x64'], steps: 2}\n"
                      "  - {revert_to: 1}\n"
                      "  - {text: Edit it., edit: true}\n"
                      "  - {revert_to: 9}\n"
                      "  - {text: This one., images: ['version:2']}\n")
    out = tmp_path / "out"
    replay_runtime([Reply().text("Step 0.").image(seed=0).eos(),
                    Reply().text("Step 1.").image(seed=1).eos(),
                    Reply().text("Edited.").image(seed=2).eos(),
                    Reply().text("A picture.").eos()], runtime=rt)
    assert cli.main(["run", str(script), "--out", str(out)]) == 0
    transcript = json.loads((out / "transcript.json").read_text())
    turns = transcript["turns"]
    assert [t["script_index"] for t in turns] == [0, 0, 1, 2, 3, 4]
    assert transcript["complete"] is True
    assert [t["errors"] for t in turns][:4] == [[], [], [], []]
    assert turns[2]["request"]["revert_to"] == 1 and turns[2]["index"] == 2
    assert turns[4]["errors"][0]["source"] == "input"
    assert "no version 9" in turns[4]["errors"][0]["message"]
    # the edit after revert_to: 1 edited version 1 (the scene given), so it branches
    versions = {v["number"]: v for v in transcript["versions"]}
    edited = turns[3]["images"][0]["image_id"]
    (made,) = [v for v in versions.values() if v["image_id"] == edited]
    assert made["parent"] == 1
    assert turns[5]["model_images"] == [versions[2]["image_id"]]
    assert transcript["working_version"] == 2  # the picture the last turn was about


# --- what a skill may ask of the turn ----------------------------------------------------------

class Seen(BaseModel):
    version: ClassVar[int] = 1
    images: int
    earlier: list[str]


class Wishes(Skill):
    """Asks for a picture and a variant; records what it saw and the earlier actions."""

    name = "wishes"
    consumes = frozenset({"text", "image"})
    action_types = {"seen": Seen}
    model_reads_images = False
    wishes: ClassVar[dict] = {"max_new_tokens": 99, "seed": 7}

    def turn_options(self, request, variants):
        return dict(self.wishes)

    def to_actions(self, reply):
        return [self.make_action("seen", Seen(images=len(reply.input_images), earlier=[]))]

    def run(self, action, context):
        earlier = [a.skill for a in context.earlier_actions]
        (context.artifact_dir / "earlier.json").write_text(json.dumps(earlier))
        return ActionResult(message=f"{len(context.earlier_actions)} earlier",
                            artifacts=(context.artifact_dir / "earlier.json",))


class Other(Wishes):
    name = "other"
    wishes: ClassVar[dict] = {}


class BadWishes(Wishes):
    name = "bad_wishes"
    wishes: ClassVar[dict] = {"not_an_option": 1}


@pytest.fixture
def wishes(rt, monkeypatch):
    from seedx_agent.plugins import pm

    class Plugin:
        @hookimpl
        def register_skills(self, register):
            register(Wishes())
            register(Other())
            register(BadWishes())

    plugin = Plugin()
    pm.register(plugin, name="test-versions-wishes")
    monkeypatch.setattr(rt, "_skill_host", SkillHost(pm))
    yield
    pm.unregister(plugin)


def test_a_skill_wishes_options_and_the_user_wins(rt, replay, wishes, tmp_path):
    replay(Reply().text("One.").image(seed=1).eos(), Reply().text("Two.").image(seed=2).eos())
    session = rt.open_session(artifact_dir=tmp_path)
    wished = drawn(session.ask("Draw.", skill="wishes", **FAST))
    assert session.history[0].request.options["max_new_tokens"] == 99  # the skill's wish
    assert wished.provenance.seed == 7
    mine = drawn(session.ask("Draw.", skill="wishes", seed=3, **FAST))
    assert mine.provenance.seed == 3  # the user's explicit option wins


def test_wishes_that_are_no_turn_options_are_a_skills_error(rt, replay, wishes):
    replay()
    done = rt.open_session().ask("Draw.", skill="bad_wishes")
    (error,) = done.errors
    assert error.source == "skills" and "not_an_option" in error.message


def test_a_skill_that_reads_no_images_gets_them_but_the_model_does_not(rt, replay, wishes,
                                                                      tmp_path):
    replay(Reply().text("A slide.").image(seed=1).eos())
    session = rt.open_session(artifact_dir=tmp_path)
    done = session.ask("Put this on a slide.", [synthetic_image(64, 48, 2)], skill="wishes", **FAST)
    assert done.ok, done.errors
    (action,) = done.actions
    assert action.payload["images"] == 1  # the skill has the picture ...
    assert session.history[0].context.image_ids == ()  # ... the model never read it


def test_earlier_actions_are_the_skills_own_from_finished_turns(rt, replay, wishes, tmp_path):
    replay(*(Reply().text(f"{k}.").image(seed=k).eos() for k in range(4)))
    session = rt.open_session(artifact_dir=tmp_path)
    counts = []
    for skill in ("wishes", "other", "wishes", "wishes"):
        done = session.ask("Go.", skill=skill, **FAST)
        assert done.ok, done.errors
        (path,) = [p for p in done.artifacts if p.endswith("earlier.json")]
        counts.append(json.loads(open(path).read()))
    assert counts == [[], [], ["wishes"], ["wishes", "wishes"]]

