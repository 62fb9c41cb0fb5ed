"""SkillHost: registration checks, selection, dispatch, and isolation of misbehaving skills."""

import threading
import time
from typing import ClassVar

import pytest
from pydantic import BaseModel

from seedx_agent.plugins import pm
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import (ActionResult, Skill, SkillContext, SkillError,
                                SkillRegistrationError, SkillReply, SkillRequest,
                                SkillRequestError, arrange_images, hookimpl)
from seedx_agent.types import Action, BoxPart, ImagePart, TextPart

RELEASE = threading.Event()  # lets the never-ending skill's thread end when the tests are done


class Note(BaseModel):
    version: ClassVar[int] = 1
    text: str


class TextSkill(Skill):
    """A well-behaved skill: one ``note`` action per reply, written to a file when run."""

    name = "good"
    consumes = frozenset({"text"})
    deadline_s = 5.0
    action_types = {"note": Note}

    def build_prompt(self, request):
        return f"Please: {request.text}"

    def to_actions(self, reply):
        return [self.make_action("note", Note(text=reply.parts[0].text))]

    def run(self, action, context):
        path = context.artifact_dir / "note.txt"
        path.write_text(self.parse_payload(action).text)
        return ActionResult(message="noted", artifacts=(path,))


class Raises(TextSkill):
    name = "raises"

    def to_actions(self, reply):
        raise RuntimeError("boom")


class NeverReturns(TextSkill):
    name = "never_returns"
    deadline_s = 0.5

    def to_actions(self, reply):
        RELEASE.wait()
        return []


class BadPayload(TextSkill):
    """One invalid action and one good one: only the bad one may fail."""

    name = "bad_payload"

    def to_actions(self, reply):
        return [Action(skill=self.name, action="note", payload={"text": ["not", "a", "str"]}),
                self.make_action("note", {"text": "fine"})]


class Junk(TextSkill):
    name = "junk"

    def to_actions(self, reply):
        return "not a list"


class RunJunk(TextSkill):
    name = "run_junk"

    def run(self, action, context):
        return 42


class Impostor(TextSkill):
    name = "impostor"

    def to_actions(self, reply):
        return [Action(skill="good", action="note", payload={"text": "x"})]


@pytest.fixture(scope="module", autouse=True)
def _release_threads():
    yield
    RELEASE.set()


@pytest.fixture
def make_host():
    """Register skills through a temporary plugin on the real manager, then remove it."""
    plugins = []

    def make(*skills):
        class Plugin:
            @hookimpl
            def register_skills(self, register):
                for skill in skills:
                    register(skill)

        plugin = Plugin()
        pm.register(plugin, name=f"test-skills-{len(plugins)}")
        plugins.append(plugin)
        return SkillHost(pm)

    yield make
    for plugin in plugins:
        pm.unregister(plugin)


def text_reply(text="hello", skill=None):
    return SkillReply(request=SkillRequest(text=text, skill=skill), parts=(TextPart(text=text),))


def context(tmp_path):
    return SkillContext(artifact_dir=tmp_path, get_image=lambda image_id: None)


def test_good_skill_runs_and_reports(make_host, tmp_path):
    host = make_host(TextSkill())
    ctx = context(tmp_path)
    events = list(host.dispatch(text_reply("hi"), ctx))
    assert [e.type for e in events] == ["action_event"]
    assert events[0].action == Action(skill="good", action="note", payload={"text": "hi"})
    assert (tmp_path / "good" / "note.txt").read_text() == "hi"
    note = tmp_path / "good" / "note.txt"
    assert ctx.results == [ActionResult(message="noted", artifacts=(note,),
                                        action=events[0].action)]


def test_misbehaving_skills_fail_alone_and_the_turn_completes(make_host, tmp_path):
    host = make_host(TextSkill(), Raises(), NeverReturns(), BadPayload(), Junk(), RunJunk(),
                     Impostor())
    start = time.monotonic()
    events = list(host.dispatch(text_reply("hi"), context(tmp_path)))
    elapsed = time.monotonic() - start
    assert elapsed < 0.5 + 2.0  # the deadline, plus slack for a loaded 2-core machine
    summary = [(e.type, e.source if e.type == "error" else e.action.skill) for e in events]
    assert summary == [  # skills run in name order
        ("error", "skill:bad_payload"), ("action_event", "bad_payload"),
        ("action_event", "good"),
        ("error", "skill:impostor"),
        ("error", "skill:junk"),
        ("error", "skill:never_returns"),
        ("error", "skill:raises"),
        ("error", "skill:run_junk"),
    ]
    messages = {e.source: e.message for e in events if e.type == "error"}
    assert "text" in messages["skill:bad_payload"] and "invalid 'note' payload" in \
        messages["skill:bad_payload"]
    assert "deadline of 0.5 s" in messages["skill:never_returns"]
    assert "boom" in messages["skill:raises"]
    assert "str" in messages["skill:junk"] and "not a list of Action" in messages["skill:junk"]
    assert "not an ActionResult" in messages["skill:run_junk"]
    assert "claims to be from skill 'good'" in messages["skill:impostor"]


def test_selection_named_default_and_by_part_type(make_host):
    host = make_host(TextSkill(), Raises())
    box_reply = SkillReply(request=SkillRequest(), parts=(BoxPart(bins=(1, 1, 1, 1)),))
    assert [s.name for s in host.select(text_reply())] == ["good", "raises"]
    assert [s.name for s in host.select(text_reply(skill="raises"))] == ["raises"]
    assert [s.name for s in host.select(text_reply(), default_skill="good")] == ["good"]
    # a named skill runs even if it does not consume the reply's parts
    assert [s.name for s in host.select(box_reply, default_skill="good")] == ["good"]
    assert "good" not in [s.name for s in host.select(box_reply)]
    with pytest.raises(SkillError, match="no skill named 'nope'"):
        host.select(text_reply(skill="nope"))
    events = list(host.dispatch(text_reply(skill="nope"), context(None)))
    assert [(e.type, e.source) for e in events] == [("error", "skills")]


def test_build_prompt(make_host):
    class Broken(TextSkill):
        name = "broken"

        def build_prompt(self, request):
            raise ValueError("nope")

    host = make_host(TextSkill(), Broken())
    request = SkillRequest(text="find the cat")
    assert host.build_prompt(request) == "find the cat"
    assert host.build_prompt(request, default_skill="good") == "Please: find the cat"
    with pytest.raises(SkillError, match="broken"):
        host.build_prompt(request.model_copy(update={"skill": "broken"}))


@pytest.mark.parametrize("bad, problem", [
    (TextSkill, "register an instance"),
    ("grounding", "expected a seedx_agent.skills.Skill"),
    (type("X", (TextSkill,), {"name": "Bad Name"})(), "name must match"),
    (type("X", (TextSkill,), {"consumes": "box"})(), "consumes must be a frozenset"),
    (type("X", (TextSkill,), {"consumes": frozenset({"audio"})})(), "consumes must be"),
    (type("X", (TextSkill,), {"deadline_s": 0})(), "deadline_s must be a positive"),
    (type("X", (TextSkill,), {"action_types": {}})(), "action_types must be a non-empty"),
    (type("X", (TextSkill,), {"action_types": {"a": dict}})(), "must be a pydantic model"),
    (type("X", (Skill,), {"name": "x", "action_types": {"note": Note}})(), "implement to_actions"),
    (type("X", (TextSkill,), {"variant_role": "Try On"})(), "variant_role must be None or a role"),
    (type("X", (TextSkill,), {"image_roles": ["person"]})(), "image_roles must be a tuple"),
    (type("X", (TextSkill,), {"image_roles": ("a", "a")})(), "image_roles must be a tuple of dis"),
])
def test_bad_declarations_are_refused_clearly(make_host, bad, problem):
    with pytest.raises(SkillRegistrationError, match=problem):
        make_host(bad)


def test_check_request_refuses_in_the_skills_words(make_host):
    class Picky(TextSkill):
        name = "picky"

        def check_request(self, request, get_image):
            if get_image("x") != "pixels":
                raise SkillRequestError("not those pixels")

    class Buggy(TextSkill):
        name = "buggy"

        def check_request(self, request, get_image):
            raise KeyError("a bug")

    host = make_host(TextSkill(), Picky(), Buggy())
    request = SkillRequest(text="hi")
    host.check_request(request, lambda _id: "pixels", default_skill="picky")  # accepted
    host.check_request(request, lambda _id: "other")  # no skill: nothing to check
    with pytest.raises(SkillRequestError, match="^not those pixels$"):
        host.check_request(request, lambda _id: "other", default_skill="picky")
    with pytest.raises(SkillError, match="skill 'buggy' failed to check the request") as caught:
        host.check_request(request, lambda _id: "other", default_skill="buggy")
    assert not isinstance(caught.value, SkillRequestError)  # a bug is not the user's mistake


def test_images_are_arranged_by_the_roles_a_skill_names():
    class TwoImages(TextSkill):
        name = "two"
        image_roles = ("person", "garment")

    a, b = (ImagePart(image_id=c * 64, width=1, height=1) for c in "ab")
    two = TwoImages()
    assert arrange_images((a, b), None, two) == (a, b)
    assert arrange_images((a, b), ("garment", "person"), two) == (b, a)
    assert arrange_images((a, b, a), None, TextSkill()) == (a, b, a)  # no roles: as given
    for images, given, skill, words in [
            ((a,), None, two, "takes 2 images, person then garment; got 1"),
            ((a, b), ("person", "person"), two, "image_roles were person, person"),
            ((a, b), ("person", "garment"), TextSkill(), "takes its images in order")]:
        with pytest.raises(SkillRequestError, match=words):
            arrange_images(images, given, skill)


def test_variants_declare_roles_and_a_skill_finds_them():
    from seedx_agent.variants import Variant, VariantRegistry

    registry = VariantRegistry()
    assert [v.roles for v in registry] == [(), (), ()]  # the released three claim no job
    registry.register(Variant(name="dresser", detokenizer_stage=2, roles=("tryon", "tryon")))
    assert registry.get("dresser").roles == ("tryon",)
    assert [v.name for v in registry.with_role("tryon")] == ["dresser"]
    assert registry.choose(role="tryon").name == "dresser"
    assert registry.choose(preferred="seed_x", default="seed_x_i").name == "seed_x"
    assert registry.choose(edit=True).name == "seed_x_edit"
    with pytest.raises(LookupError, match="'seed_x_i' does not declare it.*dresser"):
        registry.choose("seed_x_i", role="tryon", needed_by="skill 'tryon'")
    with pytest.raises(LookupError, match="needs a variant with the role 'story' and none"):
        registry.choose(role="story")
    with pytest.raises(ValueError, match="roles must match"):
        Variant(name="x", roles=("Try-On",))


def test_duplicates(make_host):
    host = make_host(TextSkill(), TextSkill())  # the same skill twice counts once
    assert [name for name in host.skills if name == "good"] == ["good"]

    class OtherGood(TextSkill):
        pass

    with pytest.raises(SkillRegistrationError, match="'good' is registered twice.*OtherGood"):
        make_host(OtherGood())


def test_unknown_plugins_payloads_stay_opaque(make_host):
    host = make_host(TextSkill())
    assert host.parse_payload(Action(skill="good", action="note", payload={"text": "a"})) == \
        Note(text="a")
    foreign = Action(skill="not_installed", action="x", version=3, payload={"any": [1]})
    assert host.parse_payload(foreign) == {"any": [1]}


def test_placed_boxes_follow_the_target_rule():
    small = ImagePart(image_id="a" * 64, width=100, height=100)
    wide = ImagePart(image_id="b" * 64, width=320, height=160)
    drawn = ImagePart(image_id="c" * 64, width=64, height=32, role="generated")
    box = BoxPart(bins=(112, 112, 56, 112), phrase="car")

    # several images: the box is on the last input image, not on the generated one
    reply = SkillReply(request=SkillRequest(images=(small, wide)), parts=(box, drawn))
    (placed,) = reply.placed_boxes()
    assert (placed.target_image, placed.target_kind) == (wide.image_id, "input")
    assert placed.pixel_xyxy == (120.0, 40.0, 200.0, 120.0)

    # the runtime's own target wins
    runtime = box.model_copy(update={"target_image": small.image_id})
    (placed,) = SkillReply(request=SkillRequest(images=(small, wide)), parts=(runtime,)) \
        .placed_boxes()
    assert placed.pixel_xyxy == (37.5, 25.0, 62.5, 75.0)

    # no input image: the picture the model drew
    (placed,) = SkillReply(request=SkillRequest(), parts=(box, drawn)).placed_boxes()
    assert (placed.target_image, placed.target_kind) == (drawn.image_id, "generated")
    assert placed.pixel_xyxy == (24.0, 8.0, 40.0, 24.0)

    # nothing to place it on
    (placed,) = SkillReply(request=SkillRequest(), parts=(box,)).placed_boxes()
    assert placed.pixel_xyxy is None
