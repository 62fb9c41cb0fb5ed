"""The designer skill: recorded replies parsed exactly, the edit chain, malformed replies, Nano.

On the tiny stack, a variant declaring the ``designer`` role replays recorded replies
(``seedx_agent.testing``): each request kind is checked for the variant and edit flag it ran
with, each action field by field with its files on disk, the edit chain through
``Session.revert`` as a version tree that a resumed session keeps, and every malformed reply
the issue names as a partial artifact with warnings. On the shipped SEED-X Nano, posters and
improvements are measured on held-out requests and examples/designer.yaml is run as a user
would run it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

import seedx_designer
from core_models.image_io import content_hash
from seedx_agent import Variant, VariantRegistry
from seedx_agent.store import SessionStore
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.types import ImagePart
from seedx_designer.kinds import kind_of

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "examples" / "nano" / "scene.png"
INTENT = "A large red circle in the middle, under a bold title."
SUGGESTION = "Remove the green square to make the image less crowded."
EDITED = "Here is the edited image."
DESIGN, IMPROVE, RECOLOUR = ("Design a poster with a red circle.",
                             "How could this image be improved?", "Make the circle blue.")
FAST = {"num_inference_steps": 1}
TINY_DESIGNER = Variant(name="tiny_designer", description="a designer variant of the tiny stack",
                        roles=("designer",))


@pytest.fixture(scope="module")
def scene():
    return Image.open(SCENE).convert("RGB")


@pytest.fixture
def replay(rt, tmp_path):
    """``replay(*replies, store=None)``: a designer session on ``rt`` replaying them."""
    rt.variants.register(TINY_DESIGNER)

    def session_with(*replies, store=None):
        replay_runtime(replies, runtime=rt)
        return rt.open_session(artifact_dir=tmp_path / "artifacts", store=store,
                               default_skill="designer")

    yield session_with
    stop_replay(rt)


def made(done) -> list[ImagePart]:
    return [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]


def said(text: str, seed: int = 3) -> Reply:
    return Reply().text(text).image(seed=seed).eos()


def provenance_chunk(path) -> dict | None:
    text = Image.open(path).text.get("seedx:provenance")
    return None if text is None else json.loads(text)


def out_dir(tmp_path, turn: int) -> Path:
    return tmp_path / "artifacts" / f"turn-{turn:03d}" / "designer"


# --- which job a request is, and what it runs on -----------------------------------------------

@pytest.mark.parametrize("text, has_picture, kind", [
    (DESIGN, False, "design"), ("Create a flyer for a bake sale.", False, "design"),
    ("Make a poster with a blue square.", False, "design"), ("Draw a cat.", False, "design"),
    (IMPROVE, True, "suggest"), (IMPROVE, False, "suggest"), ("Any suggestions?", True, "suggest"),
    ("Make it better.", False, "suggest"),
    (RECOLOUR, False, "edit"), (RECOLOUR, True, "edit"), ("Remove the square.", False, "edit"),
    ("Draw a hat on the person.", True, "edit"), ("Design something with this.", True, "edit"),
])
def test_the_kind_of_a_request_is_read_from_its_words_and_picture(text, has_picture, kind):
    assert kind_of(text, has_picture) == kind


@pytest.mark.parametrize("text, with_image, options, variant, edit", [
    (DESIGN, False, {}, "tiny_designer", False),
    (IMPROVE, True, {}, "tiny_designer", True),
    (RECOLOUR, True, {}, "seed_x_edit", True),
    (DESIGN, False, {"variant": "seed_x_i"}, "seed_x_i", False),      # the user's choice wins
    (IMPROVE, True, {"variant": "seed_x_edit"}, "seed_x_edit", True),
    (RECOLOUR, True, {"edit": False}, "seed_x_i", False),
])
def test_each_request_kind_runs_on_its_variant(replay, scene, text, with_image, options,
                                               variant, edit):
    session = replay(said("Here."))
    done = session.ask(text, [scene] if with_image else [], **options, **FAST)
    assert done.ok, done.errors
    turn = session.history[-1]
    assert (turn.variant, turn.request.edit) == (variant, edit)
    (picture,) = made(done)
    assert picture.role == ("edited" if edit else "generated")


def test_without_a_designer_variant_designs_on_the_session_variant(replay, scene, rt,
                                                                   monkeypatch):
    session = replay(said(INTENT), said(SUGGESTION))
    monkeypatch.setattr(rt, "variants", VariantRegistry())  # the released three: no role
    assert session.ask(DESIGN, **FAST).ok and session.history[-1].variant == "seed_x_i"
    assert session.ask(IMPROVE, [scene], **FAST).ok
    assert (session.history[-1].variant, session.history[-1].request.edit) == ("seed_x_edit", True)


def test_a_design_request_the_user_runs_as_an_edit_is_an_edit_action(replay):
    session = replay(said(INTENT), said(EDITED, seed=4))
    (poster,) = made(session.ask(DESIGN, **FAST))
    done = session.ask("Draw a blue square.", edit=True, **FAST)  # the user's edit=True wins
    turn = session.history[-1]  # on the variant the skill wished for, as the user's edit
    assert (turn.variant, turn.request.edit) == ("tiny_designer", True)
    (action,) = done.actions
    assert action.action == "edit" and action.payload["source"]["image_id"] == poster.image_id


def test_a_design_does_not_read_the_picture_before_it(replay, scene):
    session = replay(said(SUGGESTION), said(INTENT))
    session.ask(IMPROVE, [scene], **FAST)
    done = session.ask(DESIGN, **FAST)
    assert session.history[-1].context.image_ids == ()  # a new design starts from the words
    assert made(done)[0].provenance.parents == ()
    assert done.actions[0].action == "design"


# --- the three actions, parsed exactly --------------------------------------------------------

def test_a_design_reply_is_a_design_action_with_poster_and_notes(replay, tmp_path):
    session = replay(said(INTENT))
    done = session.ask(DESIGN, **FAST)
    assert done.ok and done.finish_reason == "eos"
    (poster,) = made(done)
    assert poster.provenance.variant == "tiny_designer" and poster.provenance.parents == ()
    provenance = poster.provenance.model_dump(mode="json")
    (action,) = done.actions
    assert (action.skill, action.action, action.version) == ("designer", "design", 1)
    assert action.payload == {
        "request": DESIGN, "intent": INTENT,
        "poster": {"image_id": poster.image_id, "width": poster.width, "height": poster.height,
                   "provenance": provenance},
        "warnings": []}

    out = out_dir(tmp_path, 0)
    assert done.artifacts == tuple(str((out / n).resolve())
                                   for n in ("poster.png", "design.md", "design.json"))
    assert content_hash(Image.open(out / "poster.png")) == poster.image_id
    assert provenance_chunk(out / "poster.png") == provenance
    note = (out / "design.md").read_text()
    assert DESIGN in note and INTENT in note and "variant `tiny_designer`" in note
    assert "seed 42, 1 steps" in note and "## Warnings" not in note
    record = json.loads((out / "design.json").read_text())
    assert record == {"skill": "designer", "action": "design", "version": 1, **action.payload,
                      "files": {"poster": "poster.png", "note": "design.md"}}


def test_a_suggestion_is_drawn_as_an_edit_of_the_users_picture(replay, scene, tmp_path):
    session = replay(said(SUGGESTION))
    done = session.ask(IMPROVE, [scene], **FAST)
    assert done.ok
    (after,) = made(done)
    before = content_hash(scene)
    assert after.role == "edited" and after.provenance.detokenizer_stage == 2
    assert after.provenance.parents == (before,)
    provenance = after.provenance.model_dump(mode="json")
    (action,) = done.actions
    assert (action.action, action.version) == ("suggest", 1)
    assert action.payload == {
        "request": IMPROVE, "suggestion": SUGGESTION,
        "before": {"image_id": before, "width": 192, "height": 128},
        "after": {"image_id": after.image_id, "width": after.width, "height": after.height,
                  "provenance": provenance},
        "warnings": []}

    out = out_dir(tmp_path, 0)
    assert [Path(a).name for a in done.artifacts] == ["after.png", "before_after.png",
                                                      "suggestion.md", "suggestion.json"]
    assert content_hash(Image.open(out / "after.png")) == after.image_id
    assert provenance_chunk(out / "after.png") == provenance
    strip = Image.open(out / "before_after.png")
    strip_provenance = {**provenance, "parents": [before, after.image_id]}
    assert provenance_chunk(out / "before_after.png") == strip_provenance
    after_w = round(after.width * 128 / after.height)
    assert strip.size == (192 + after_w + 3 * 6, 128 + 16 + 2 * 6)
    assert strip.convert("RGB").crop((6, 6, 198, 134)).tobytes() == scene.tobytes()
    assert SUGGESTION in (out / "suggestion.md").read_text()
    record = json.loads((out / "suggestion.json").read_text())
    assert record["suggestion"] == SUGGESTION and record["before"] == action.payload["before"]
    assert record["before_after"] == {"panels": ["before", "after"],
                                      "provenance": strip_provenance}


def test_an_edit_of_the_working_image_records_source_and_parent(replay, tmp_path):
    session = replay(said(INTENT), said(EDITED))
    (poster,) = made(session.ask(DESIGN, **FAST))
    done = session.ask(RECOLOUR, **FAST)  # no picture given: the working image is edited
    (edited,) = made(done)
    assert session.history[-1].variant == "seed_x_edit"
    (action,) = done.actions
    assert (action.action, action.version) == ("edit", 1)
    assert action.payload == {
        "instruction": RECOLOUR, "text": EDITED,
        "source": {"image_id": poster.image_id, "width": poster.width, "height": poster.height},
        "edited": {"image_id": edited.image_id, "width": edited.width, "height": edited.height,
                   "provenance": edited.provenance.model_dump(mode="json")},
        "parent_id": poster.image_id, "warnings": []}
    out = out_dir(tmp_path, 1)
    assert [Path(a).name for a in done.artifacts] == ["edited.png", "edit.json"]
    assert content_hash(Image.open(out / "edited.png")) == edited.image_id
    assert provenance_chunk(out / "edited.png")["parents"] == [poster.image_id]
    record = json.loads((out / "edit.json").read_text())
    assert record["chain"] == [{"image_id": poster.image_id, "made_by": "design",
                                "request": DESIGN}]


# --- the edit chain: versions, revert, branch, resume -------------------------------------------

def test_an_edit_chain_branches_after_revert_and_resumes_from_the_store(replay, rt, tmp_path):
    store = SessionStore(tmp_path / "store")
    session = replay(*(said(t, seed) for seed, t in enumerate([INTENT] + 3 * [EDITED])),
                     store=store)
    (poster,) = made(session.ask(DESIGN, **FAST))
    (first,) = made(session.ask(RECOLOUR, **FAST))
    (second,) = made(session.ask("Make the title bar red.", **FAST))
    assert session.revert(2).image_id == first.image_id
    done = session.ask("Make the circle green.", **FAST)
    (branch,) = made(done)

    assert [(v.number, v.parent) for v in session.versions()] == [
        (1, None), (2, 1), (3, 2), (4, 2)]
    assert [v.image_id for v in session.versions()] == [
        poster.image_id, first.image_id, second.image_id, branch.image_id]
    (action,) = done.actions
    assert action.payload["source"]["image_id"] == first.image_id  # version 2, not 3
    assert action.payload["parent_id"] == first.image_id
    record = json.loads((out_dir(tmp_path, 4) / "edit.json").read_text())  # turn 3 reverted
    assert [(c["made_by"], c["image_id"]) for c in record["chain"]] == [
        ("design", poster.image_id), ("edit", first.image_id)]
    assert session.working_image().image_id == branch.image_id

    resumed = rt.open_session(store=store, session_id=session.id)
    assert resumed.versions() == session.versions()
    assert resumed.working_image().image_id == branch.image_id
    assert [a.payload for a in resumed.history[4].actions] == [action.payload]
    fork = store.fork(session.id, at_turn=3)  # up to and including the revert
    forked = rt.open_session(store=store, session_id=fork.id)
    assert [(v.number, v.parent) for v in forked.versions()] == [(1, None), (2, 1), (3, 2)]
    assert forked.working_image().image_id == first.image_id
    store.close()


# --- malformed replies: a partial artifact with warnings, never a lost turn --------------------

def test_a_design_reply_without_a_picture_keeps_the_intent(replay, tmp_path):
    session = replay(Reply().text(INTENT).eos(), said(INTENT))
    done = session.ask(DESIGN, **FAST)
    assert done.ok and not made(done)
    (action,) = done.actions
    assert action.payload["poster"] is None and action.payload["intent"] == INTENT
    assert action.payload["warnings"] == ["the reply has no picture"]
    out = out_dir(tmp_path, 0)
    assert [Path(a).name for a in done.artifacts] == ["design.md", "design.json"]
    assert not (out / "poster.png").exists()
    note = (out / "design.md").read_text()
    assert INTENT in note and "No picture was drawn." in note and "the reply has no picture" in note
    assert json.loads((out / "design.json").read_text())["files"]["poster"] is None
    assert session.ask(DESIGN, **FAST).ok  # and the session goes on


def test_a_cut_off_image_run_is_a_partial_design_with_the_parsers_warning(replay, tmp_path):
    session = replay(Reply().text(INTENT).tokens("<img>", "<img_00000>", "<img_00001>").eos())
    done = session.ask(DESIGN, **FAST)
    assert done.ok and not made(done)
    warnings = done.actions[0].payload["warnings"]
    assert "an image was started but not produced" in warnings
    assert "the reply has no picture" in warnings
    assert "an image was started but not produced" in (out_dir(tmp_path, 0) / "design.md").read_text()


def test_a_reply_cut_off_by_max_new_tokens_inside_its_picture_is_a_partial_design(replay,
                                                                                 tmp_path):
    session = replay(Reply().image(seed=3).text(INTENT).eos())
    done = session.ask(DESIGN, max_new_tokens=5, **FAST)  # <img> and 4 of its placeholders
    assert done.finish_reason == "max_new_tokens" and not done.errors and not made(done)
    (action,) = done.actions
    assert action.payload["poster"] is None and action.payload["intent"] == ""
    assert set(action.payload["warnings"]) >= {"an image was started but not produced",
                                               "the reply has no picture",
                                               "the reply has no words: the design has no intent"}
    assert [Path(a).name for a in done.artifacts] == ["design.md", "design.json"]
    assert "_The model gave no intent._" in (out_dir(tmp_path, 0) / "design.md").read_text()


def test_a_suggestion_without_a_picture_shows_the_before_only(replay, scene, tmp_path):
    session = replay(Reply().text(SUGGESTION).eos())
    done = session.ask(IMPROVE, [scene], **FAST)
    assert done.ok and not made(done)
    (action,) = done.actions
    assert action.payload["after"] is None and action.payload["suggestion"] == SUGGESTION
    assert action.payload["before"]["image_id"] == content_hash(scene)
    assert action.payload["warnings"] == ["the reply has no picture"]
    out = out_dir(tmp_path, 0)
    assert [Path(a).name for a in done.artifacts] == ["before_after.png", "suggestion.md",
                                                      "suggestion.json"]
    strip = Image.open(out / "before_after.png")
    assert provenance_chunk(out / "before_after.png") is None
    assert strip.size == (2 * 192 + 3 * 6, 128 + 16 + 2 * 6)  # an empty after panel
    assert strip.convert("RGB").getpixel((6 + 192 + 6 + 3, 6 + 3)) == (225, 225, 225)
    assert SUGGESTION in (out / "suggestion.md").read_text()


def test_an_edit_without_a_picture_or_words_is_recorded_with_warnings(replay, scene, tmp_path):
    session = replay(Reply().text("I cannot.").eos(), Reply().image(seed=3).eos())
    done = session.ask(RECOLOUR, [scene], **FAST)
    assert done.ok and done.actions[0].payload["edited"] is None
    assert done.actions[0].payload["warnings"] == ["the reply has no picture"]
    assert [Path(a).name for a in done.artifacts] == ["edit.json"]
    quiet = session.ask(IMPROVE, [scene], **FAST)  # a picture but no suggestion in words
    assert quiet.actions[0].payload["warnings"] == ["the reply has no words: there is no "
                                                    "suggestion"]
    assert quiet.actions[0].payload["after"] is not None


def test_an_edit_with_nothing_to_edit_is_a_clear_error(replay):
    session = replay(said(EDITED))
    done = session.ask(RECOLOUR, **FAST)
    (error,) = done.errors
    assert error.source == "input" and "nothing to edit" in error.message
    assert len(session.runtime.replay) == 1  # the model never ran
    assert session.ask(DESIGN, **FAST).ok


def test_two_pictures_keep_the_first(replay):
    session = replay(Reply().text(INTENT).image(seed=3).image(seed=4).eos())
    done = session.ask(DESIGN, **FAST)
    first, _ = made(done)
    assert done.actions[0].payload["poster"]["image_id"] == first.image_id
    assert done.actions[0].payload["warnings"] == ["the reply has 2 pictures; the first is kept"]


def test_the_skill_is_a_plugin_like_any_other():
    from seedx_agent.plugins import get_plugins
    from seedx_agent.skill_host import SkillHost

    assert 'designer = "seedx_designer"' in (ROOT / "pyproject.toml").read_text()
    assert "designer" in [p["name"] for p in get_plugins()]
    skill = SkillHost().get("designer")
    assert isinstance(skill, seedx_designer.DesignerSkill) and skill.variant_role is None
    assert set(skill.action_types) == {"design", "suggest", "edit"}


# --- the shipped SEED-X Nano --------------------------------------------------------------------

def _held_out(suite: str, k: int):
    from seedx_nano import suites

    return suites.eval_example(suite, k), suites.suite_seed(suite, k)


def test_the_nano_designs_held_out_posters_with_their_intent(nano, tmp_path):
    """20 held-out "Design a poster with a {colour} {shape}." requests (the eval suite
    ``poster``'s, with its seeds) through the skill; ``poster.png`` is read by the Nano's
    analyser and the intent in ``design.json`` must name that object and no other
    (`metrics.poster_correct`). Measured on the shipped weights: 20 of 20."""
    from seedx_nano import metrics

    right = []
    for k in range(20):
        ex, seed = _held_out("poster", k)
        session = nano.open_session(artifact_dir=tmp_path / str(k))
        done = session.ask(ex.instruction, skill="designer", seed=seed)
        assert done.ok, done.errors
        assert session.history[-1].variant == "designer"  # found by its role
        out = tmp_path / str(k) / "turn-000" / "designer"
        intent = json.loads((out / "design.json").read_text())["intent"]
        poster = Image.open(out / "poster.png") if (out / "poster.png").exists() else None
        right.append(metrics.poster_correct(intent, poster, ex.meta["colour"], ex.meta["shape"]))
    assert sum(right) >= 16, f"{sum(right)}/20 posters with the object and an intent naming it"


@pytest.mark.xfail(strict=True, reason="measured 0/20 on the shipped weights (the eval's "
                                       "improve_acc is 0.09): the suggestion is a valid edit on "
                                       "17/20 (the rule's own on 8/20), but the picture applies "
                                       "it on none")
def test_the_nano_suggests_and_draws_improvements_of_held_out_scenes(nano, tmp_path):
    """20 held-out flawed scenes (the eval suite ``improve``'s: a third each of a shared colour,
    three objects, an off-centre object) with "How could this image be improved?": the
    suggestion must be a valid edit of the scene and the drawn picture must apply it
    (`metrics.improve_correct`)."""
    from seedx_nano import metrics

    right = []
    for k in range(20):
        ex, seed = _held_out("improve", k)
        session = nano.open_session(artifact_dir=tmp_path / str(k))
        done = session.ask(ex.instruction, ex.images, skill="designer", seed=seed)
        assert done.ok, done.errors
        turn = session.history[-1]
        assert (turn.variant, turn.request.edit) == ("designer", True)
        (action,) = done.actions
        after = action.payload["after"]
        image = session.get_image(after["image_id"]) if after else None
        right.append(metrics.improve_correct(action.payload["suggestion"], ex.meta["scene"],
                                             image, ex.meta["edit"]))
    assert sum(right) >= 16, f"{sum(right)}/20 improvements suggested and drawn right"


def test_examples_designer_yaml_runs_on_the_nano(nano, tmp_path):
    from seedx_agent import cli
    from seedx_nano import metrics

    out = tmp_path / "out"
    assert cli.main(["run", str(ROOT / "examples" / "designer.yaml"), "--out", str(out)]) == 0
    turns = json.loads((out / "transcript.json").read_text())["turns"]
    assert [t["errors"] for t in turns] == [[]] * 6
    assert [t["variant"] for t in turns] == ["designer", "seed_x_edit", "seed_x_edit",
                                             "seed_x_edit", "designer", "seed_x_edit"]
    assert [[a["action"] for a in t["actions"]] for t in turns] == [
        ["design"], ["edit"], ["edit"], ["edit"], ["suggest"], ["edit"]]
    names = [sorted(Path(a).name for a in t["artifacts"]) for t in turns]
    assert names[0] == ["design.json", "design.md", "poster.png"]
    assert names[4] == ["after.png", "before_after.png", "suggestion.json", "suggestion.md"]
    assert all(n == ["edit.json", "edited.png"] for n in names[1:4] + names[5:])
    poster = Image.open(out / next(a for a in turns[0]["artifacts"] if a.endswith("poster.png")))
    assert metrics.t2i_correct(poster, "red", "circle")

    # the chain: 1 poster, 2 from 1, 3 from 2, (revert to 1) 4 from 1, 5 the scene, 6 from 5,
    # 7 from 2 (named as version:2)
    store = SessionStore(out / "store")
    (record,) = store.list_sessions()
    session = nano.open_session(store=store, session_id=record.id)
    assert [(v.number, v.parent) for v in session.versions()] == [
        (1, None), (2, 1), (3, 2), (4, 1), (5, None), (6, 5), (7, 2)]
    ids = [v.image_id for v in session.versions()]
    sources = [t["actions"][0]["payload"]["source"]["image_id"] for t in turns[1:4] + turns[5:]]
    assert sources == [ids[0], ids[1], ids[0], ids[1]]
    suggestion = turns[4]["actions"][0]["payload"]
    assert suggestion["suggestion"] and suggestion["before"]["image_id"] == ids[4]
    store.close()


def test_chat_designs_edits_and_reverts_on_the_nano(tmp_path):
    """The chat spelling: ``/skill designer``, then plain requests, ``/versions`` and
    ``/revert N`` (a subprocess, as a user types it)."""
    import subprocess
    import sys

    lines = ["/skill designer", DESIGN, RECOLOUR, "/versions", "/revert 1",
             "Make the circle yellow.", "/versions", "/quit"]
    result = subprocess.run(
        [sys.executable, "-m", "seedx_agent.cli", "chat", "--model", "nano", "--store",
         str(tmp_path / "store")], input="\n".join(lines) + "\n", capture_output=True,
        text=True, cwd=ROOT, timeout=300)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert "[action designer.design v1: designed: poster.png, design.md]" in out
    assert out.count("[action designer.edit v1: edited: edited.png]") == 2
    rows = [line[:14] for line in out.splitlines() if re.match(r"[* ] +\d+  ", line)]
    assert rows == ["    1  new    ", "*   2  from 1 ",                      # first /versions
                    "    1  new    ", "    2  from 1 ", "*   3  from 1 "]    # after the branch
    assert "version 1 is the working image again" in out
