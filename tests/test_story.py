"""The story skill: recorded replies parsed exactly, the step loop, the storybook, and the Nano.

On the tiny stack a variant declaring the ``story`` role replays recorded replies
(``seedx_agent.testing``): each step's action is checked field by field, ``steps=3`` is checked
to chain the pictures and to grow one book, cancelling is checked to stop the loop, and every
malformed reply is checked to give a partial book with warnings. The book is opened in headless
Chromium. On the shipped SEED-X Nano, the next scene is measured on held-out scenes and
examples/story.yaml is run as a user would run it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from PIL import Image

import seedx_story
from core_models.image_io import content_hash
from seedx_agent import PromptTemplate, Variant
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.types import ImagePart, Notice, TurnDone

ROOT = Path(__file__).resolve().parents[1]
PICTURES = ROOT / "examples" / "nano"
SAID = ["Then the red circle moves to the left.", "Then the blue square moves to the top.",
        "Then the red circle moves to the right."]
TINY_STORY = Variant(name="tiny_story", description="a story variant of the untrained tiny stack",
                     template=PromptTemplate(multi_turn=False), detokenizer_stage=1,
                     roles=("story",))


@pytest.fixture(scope="module")
def scene():
    return Image.open(PICTURES / "scene.png").convert("RGB")


@pytest.fixture
def replay(rt, tmp_path):
    """``replay(*replies)``: a session on ``rt`` (with a story variant) replaying them."""
    rt.variants.register(TINY_STORY)

    def session_with(*replies):
        replay_runtime(replies, runtime=rt)
        return rt.open_session(artifact_dir=tmp_path / "artifacts")

    yield session_with
    stop_replay(rt)


def step_reply(i: int) -> Reply:
    return Reply().text(SAID[i]).image(seed=3 + i).eos()


def made(done) -> list[ImagePart]:
    return [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]


def book_dir(tmp_path, turn: int) -> Path:
    return tmp_path / "artifacts" / f"turn-{turn:03d}" / "story"


def sentences_in(html: str) -> list[str]:
    return re.findall(r'<p class="sentence">(.*?)</p>', html)


# --- one step, parsed exactly --------------------------------------------------------------------

def test_a_story_reply_becomes_one_step_action_with_its_artifacts(replay, scene, tmp_path):
    session = replay(step_reply(0))
    done = session.ask("", [scene], skill="story", num_inference_steps=2)
    assert done.ok and done.finish_reason == "eos"
    (drawn,) = made(done)
    assert drawn.provenance.variant == "tiny_story"
    turn = session.history[-1]
    assert turn.variant == "tiny_story"  # found by its role
    assert turn.context.instruction == seedx_story.INSTRUCTION  # an empty text asks the usual
    assert turn.context.image_ids == (content_hash(scene),)

    (action,) = done.actions
    assert (action.skill, action.action, action.version) == ("story", "step", 1)
    provenance = drawn.provenance.model_dump(mode="json")
    assert action.payload == {
        "scene": {"image_id": content_hash(scene), "width": scene.width, "height": scene.height},
        "sentence": SAID[0],
        "next_scene": {"image_id": drawn.image_id, "width": drawn.width, "height": drawn.height,
                       "provenance": provenance},
        "warnings": []}

    out = book_dir(tmp_path, 0)
    assert done.artifacts == tuple(str((out / n).resolve())
                                   for n in ("step-01.png", "storybook.html", "story.json"))
    png = Image.open(out / "step-01.png")
    assert content_hash(png) == drawn.image_id
    assert json.loads(png.text["seedx:provenance"]) == provenance
    record = json.loads((out / "story.json").read_text())
    assert record == {
        "skill": "story", "action": "step", "version": 1,
        "first_scene": action.payload["scene"],
        "steps": [{"step": 1, "scene": content_hash(scene), "sentence": SAID[0],
                   "next_scene": {"file": "step-01.png", "image_id": drawn.image_id,
                                  "width": drawn.width, "height": drawn.height},
                   "provenance": provenance, "warnings": []}],
        "warnings": []}
    html = (out / "storybook.html").read_text()
    assert sentences_in(html) == [SAID[0]]
    assert html.count('src="data:image/png;base64,') == 2  # the first scene and step 1
    assert not re.search(r'(src|href)="(?!data:)', html)  # nothing outside the file


def test_the_users_words_are_sent_as_they_are(replay, scene):
    session = replay(step_reply(0))
    session.ask("Continue the story, please.", [scene], skill="story", num_inference_steps=2)
    assert session.history[-1].context.instruction == "Continue the story, please."


@pytest.mark.parametrize("count", [0, 2])
def test_a_step_takes_one_scene(replay, scene, count):
    session = replay(step_reply(0))
    done = session.ask("", [scene] * count, skill="story")
    (error,) = done.errors
    assert error.source == "skill:story" and f"got {count} images" in error.message
    assert len(session.runtime.replay) == 1  # the model never ran


# --- steps=N: the loop ---------------------------------------------------------------------------

def test_three_steps_are_three_turns_each_on_the_picture_before(replay, scene, tmp_path):
    session = replay(step_reply(0), step_reply(1), step_reply(2))
    events = list(session.turn("", [scene], skill="story", steps=3, num_inference_steps=2))
    dones = [e for e in events if isinstance(e, TurnDone)]
    assert [d.turn_index for d in dones] == [0, 1, 2] and all(d.ok for d in dones)
    assert [e.message for e in events if isinstance(e, Notice)
            and e.message.startswith("step ")] == ["step 1/3", "step 2/3", "step 3/3"]
    pictures = [made(d)[0] for d in dones]
    inputs = [content_hash(scene)] + [p.image_id for p in pictures[:2]]
    for done, source, said in zip(dones, inputs, SAID):
        (action,) = done.actions
        assert action.payload["scene"]["image_id"] == source  # the picture the step before drew
        assert action.payload["sentence"] == said
    assert [t.context.image_ids for t in session.history] == [(i,) for i in inputs]

    out = book_dir(tmp_path, 2)  # the last turn's book holds the whole story, in order
    record = json.loads((out / "story.json").read_text())
    assert record["first_scene"]["image_id"] == content_hash(scene)
    assert [s["sentence"] for s in record["steps"]] == SAID
    assert [s["scene"] for s in record["steps"]] == inputs
    assert [s["next_scene"]["image_id"] for s in record["steps"]] == [p.image_id for p in pictures]
    for n, picture in enumerate(pictures, start=1):
        assert content_hash(Image.open(out / f"step-{n:02d}.png")) == picture.image_id
    assert sentences_in((out / "storybook.html").read_text()) == SAID
    # each earlier turn's book is the story as it stood then
    assert [s["sentence"] for s in json.loads((book_dir(tmp_path, 1) / "story.json")
                                             .read_text())["steps"]] == SAID[:2]


def test_cancelling_between_steps_stops_the_loop(replay, scene):
    session = replay(step_reply(0), step_reply(1), step_reply(2))
    cancel = threading.Event()
    events = []
    for event in session.turn("", [scene], skill="story", steps=3, cancel=cancel,
                              num_inference_steps=2):
        events.append(event)
        if isinstance(event, TurnDone):
            cancel.set()  # the user presses stop after the first step
    assert sum(isinstance(e, TurnDone) for e in events) == 1 and len(session.history) == 1
    assert events[-1] == Notice(message="stopped before step 2 of 3: cancelled")
    assert len(session.runtime.replay) == 2  # the later steps were never played


def test_continuing_by_hand_and_a_new_first_scene(replay, scene, tmp_path):
    other = Image.new("RGB", (64, 64), (10, 120, 200))
    session = replay(step_reply(0), step_reply(1), step_reply(2), step_reply(0))
    session.ask("", [scene], skill="story", num_inference_steps=2)
    second = session.ask("", skill="story", num_inference_steps=2)  # on the latest picture
    assert second.actions[0].payload["scene"]["image_id"] == made(session.history[0])[0].image_id
    steps = json.loads((book_dir(tmp_path, 1) / "story.json").read_text())["steps"]
    assert [s["sentence"] for s in steps] == SAID[:2]
    # going back to the first step's picture branches: the book keeps step 1, then the new step
    branch = session.ask("", ["version:2"], skill="story", num_inference_steps=2)
    assert branch.ok
    steps = json.loads((book_dir(tmp_path, 2) / "story.json").read_text())["steps"]
    assert [s["sentence"] for s in steps] == [SAID[0], SAID[2]]
    # a picture no step drew starts a new story
    session.ask("", [other], skill="story", num_inference_steps=2)
    record = json.loads((book_dir(tmp_path, 3) / "story.json").read_text())
    assert record["first_scene"]["image_id"] == content_hash(other)
    assert [s["sentence"] for s in record["steps"]] == [SAID[0]]


# --- malformed replies ---------------------------------------------------------------------------

@pytest.mark.parametrize("reply, warning", [
    (Reply().text(SAID[0]).eos(), seedx_story.NO_PICTURE),
    (Reply().text(SAID[0]).tokens("<img>", "<img_00000>", "<img_00001>").eos(),
     "an image was started but not produced"),
])
def test_a_step_without_a_picture_gives_a_placeholder_and_a_warning(replay, scene, tmp_path,
                                                                     reply, warning):
    session = replay(reply)
    done = session.ask("", [scene], skill="story")
    assert done.ok and not made(done)  # the turn and its action stand; nothing was drawn
    (action,) = done.actions
    assert action.payload["next_scene"] is None and action.payload["sentence"] == SAID[0]
    assert warning in action.payload["warnings"]
    assert seedx_story.NO_PICTURE in action.payload["warnings"]
    out = book_dir(tmp_path, 0)
    assert [Path(a).name for a in done.artifacts] == ["storybook.html", "story.json"]
    (step,) = json.loads((out / "story.json").read_text())["steps"]
    assert step["next_scene"] is None and step["provenance"] is None
    assert step["warnings"] == action.payload["warnings"]
    html = (out / "storybook.html").read_text()
    assert sentences_in(html) == [SAID[0]]
    assert '<div class="no-picture">no picture</div>' in html and warning in html


def test_a_loop_whose_step_draws_nothing_stops_with_a_partial_book(replay, scene, tmp_path):
    session = replay(step_reply(0), Reply().text(SAID[1]).eos(), step_reply(2))
    events = list(session.turn("", [scene], skill="story", steps=3, num_inference_steps=2))
    assert sum(isinstance(e, TurnDone) for e in events) == 2
    assert events[-1] == Notice(message="stopped after step 2 of 3: it drew no picture")
    record = json.loads((book_dir(tmp_path, 1) / "story.json").read_text())
    assert [s["sentence"] for s in record["steps"]] == SAID[:2]
    assert record["steps"][1]["next_scene"] is None
    assert (book_dir(tmp_path, 1) / "step-01.png").exists()
    assert not (book_dir(tmp_path, 1) / "step-02.png").exists()


def test_a_step_with_no_sentence_or_two_pictures_is_warned_about(replay, scene):
    session = replay(Reply().image(seed=3).eos(), Reply().text(SAID[0]).image(seed=3)
                     .image(seed=4).eos())
    silent = session.ask("", [scene], skill="story", num_inference_steps=2)
    assert silent.ok and silent.actions[0].payload["sentence"] == ""
    assert silent.actions[0].payload["warnings"] == [seedx_story.NO_SENTENCE]
    two = session.ask("", [scene], skill="story", num_inference_steps=2)
    first, _second = made(two)
    assert two.actions[0].payload["next_scene"]["image_id"] == first.image_id
    assert two.actions[0].payload["warnings"] == [
        "the reply has 2 pictures; the first is the next scene"]


def test_the_skill_is_a_plugin_like_any_other():
    from seedx_agent.plugins import get_plugins
    from seedx_agent.skill_host import SkillHost

    assert 'story = "seedx_story"' in (ROOT / "pyproject.toml").read_text()
    assert "story" in [p["name"] for p in get_plugins()]
    skill = SkillHost().get("story")
    assert isinstance(skill, seedx_story.StorySkill) and skill.variant_role == "story"


# --- the storybook in a real browser -------------------------------------------------------------

BROWSER_FIX = ("the storybook test needs Debian's chromium: `apt-get install chromium "
               "chromium-driver` (as root on Debian or Ubuntu)")


@pytest.fixture(scope="module")
def chromium():
    """The headless browser, or a skip outside CI / a failure under ``CI=true`` naming the fix."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)),
                 None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no chromium on PATH: {BROWSER_FIX}")
        pytest.skip(f"no chromium on PATH: {BROWSER_FIX}")

    def browse(page: Path, *args: str) -> str:
        run = subprocess.run([found, "--headless", "--no-sandbox", "--disable-gpu",
                              "--hide-scrollbars", *args, page.resolve().as_uri()],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    return browse


def test_the_storybook_shows_its_pictures_and_sentences_in_chromium(chromium, tmp_path):
    from seedx_story.book import Page, storybook_html

    magenta, cyan, yellow = (230, 0, 230), (0, 200, 220), (240, 220, 0)
    pages = [Page(SAID[0], Image.new("RGB", (64, 64), cyan)),
             Page(SAID[1], None, (seedx_story.NO_PICTURE,)),
             Page(SAID[2], Image.new("RGB", (64, 32), yellow))]
    book = tmp_path / "storybook.html"
    book.write_text(storybook_html(Image.new("RGB", (64, 48), magenta), pages))
    shot = tmp_path / "shot.png"
    chromium(book, f"--screenshot={shot}", "--window-size=480,2200")
    rows = Image.open(shot).convert("RGB")

    def band(colour):
        """The rows where the colour spans most of a picture's width, as (first, last)."""
        hits = [y for y in range(rows.height)
                if sum(1 for x in range(0, rows.width, 4)
                       if max(abs(a - b) for a, b in zip(rows.getpixel((x, y)), colour)) < 12)
                >= 0.8 * 320 / 4]
        assert hits, f"{colour} is nowhere on the page"
        return hits[0], hits[-1]

    first, step1, gap, step3 = band(magenta), band(cyan), band((225, 225, 225)), band(yellow)
    assert first[1] < step1[0] < gap[0] < step3[0]  # in the book's order, top to bottom
    for (top, bottom), height in ((first, 240), (step1, 320), (gap, 240), (step3, 160)):
        assert abs(bottom - top + 1 - height) <= 2  # shown at 320 px wide, aspect kept
    dom = chromium(book, "--dump-dom")
    assert re.findall(r'<p class="sentence">(.*?)</p>', dom) == SAID
    assert "no picture" in dom and seedx_story.NO_PICTURE in dom


def test_a_recorded_storybook_opens_offline_with_all_its_steps(chromium, replay, scene, tmp_path):
    session = replay(step_reply(0), step_reply(1))
    list(session.turn("", [scene], skill="story", steps=2, num_inference_steps=2))
    book = book_dir(tmp_path, 1) / "storybook.html"
    alone = tmp_path / "elsewhere" / "book.html"  # away from its step PNGs: still whole
    alone.parent.mkdir()
    shutil.copy(book, alone)
    dom = chromium(alone, "--dump-dom")
    assert re.findall(r'<p class="sentence">(.*?)</p>', dom) == SAID[:2]
    assert dom.count('src="data:image/png;base64,') == 3


# --- the shipped SEED-X Nano ---------------------------------------------------------------------

def keeps_objects(first, picture: Image.Image | None) -> bool:
    """Every object of the first scene (colour and shape) is in the picture, read by the Nano's
    analyser, one detection each."""
    from seedx_nano.analyser import analyse

    if picture is None:
        return False
    found = [(d.colour, d.shape) for d in analyse(picture, tolerant=True)]
    for obj in first.objects:
        if (obj.colour, obj.shape) not in found:
            return False
        found.remove((obj.colour, obj.shape))
    return True




@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="measured 6/20 on the shipped weights (sentence and scene both right, "
                          "metrics.story_correct: 0/20; the Nano's story suite: story_acc 0.035)")
def test_the_nanos_next_scene_keeps_the_first_scenes_objects(nano, tmp_path):
    """20 held-out scenes of the Nano's story suite through the skill; the next scene
    (``step-01.png``) is read by the Nano's analyser."""
    from seedx_nano import suites

    kept = []
    for k in range(20):
        ex = suites.eval_example("story", k)
        session = nano.open_session(artifact_dir=tmp_path / str(k))
        done = session.ask(ex.instruction, ex.images, skill="story", seed=suites.suite_seed("story", k))
        assert done.ok, done.errors
        assert session.history[-1].variant == "story"  # found by its role
        picture = next((a for a in done.artifacts if a.endswith("step-01.png")), None)
        kept.append(keeps_objects(ex.meta["scene"], Image.open(picture) if picture else None))
    assert sum(kept) >= 16, f"{sum(kept)}/20 next scenes keep the first scene's objects"


def test_examples_story_yaml_runs_on_the_nano(nano, tmp_path):
    from seedx_agent import cli

    out = tmp_path / "out"
    assert cli.main(["run", str(ROOT / "examples" / "story.yaml"), "--out", str(out)]) == 0
    turns = json.loads((out / "transcript.json").read_text())["turns"]
    assert len(turns) == 3 and all(not t["errors"] for t in turns)
    assert [t["variant"] for t in turns] == ["story"] * 3
    first = content_hash(Image.open(PICTURES / "scene.png"))
    assert turns[0]["model_images"] == [first]
    book = out / next(a for a in turns[-1]["artifacts"] if a.endswith("storybook.html"))
    record = json.loads((book.parent / "story.json").read_text())
    assert record["first_scene"]["image_id"] == first and len(record["steps"]) == 3
    for step, turn in zip(record["steps"], turns):
        assert step["sentence"] and step["sentence"] in book.read_text()
        assert turn["model_images"] == [step["scene"]]
        if step["next_scene"] is not None:
            assert (book.parent / step["next_scene"]["file"]).exists()
