"""The slides skill: recorded replies parsed exactly, the deck reopened, and the Nano.

On the tiny stack, a variant declaring the ``slides`` role replays recorded replies
(``seedx_agent.testing``): the action is checked field by field, and the ``.pptx`` is reopened
with python-pptx to find the title, the bullets and the picture where the layout put them. Each
malformed reply the issue names still gives a deck, with warnings. On the shipped SEED-X Nano,
the deck's title is measured on held-out requests and examples/slides.yaml is run as a user
would run it.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
from PIL import Image
from pptx import Presentation

import seedx_slides
from core_models.image_io import content_hash
from seedx_agent import PromptTemplate, Variant
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.types import ImagePart

ROOT = Path(__file__).resolve().parents[1]
WIDE = (12192000, 6858000)  # 16:9 in EMU
BINS = 224
TITLE_BOX, TEXT_BOX, PICTURE_BOX = (112, 27, 188, 27), (64, 101, 94, 72), (166, 134, 64, 96)
BULLETS = ["A square has four equal sides.", "Its corners are right angles.",
           "Blue is a cool colour."]
TINY_SLIDES = Variant(name="tiny_slides", description="a slides variant of the tiny stack",
                      template=PromptTemplate(multi_turn=False), roles=("slides",))


def slide_reply(title="Blue squares", bullets=BULLETS, boxes=(TITLE_BOX, TEXT_BOX, PICTURE_BOX),
                picture=True, end=True) -> Reply:
    reply = Reply().text("\n".join([*([f"Title: {title}"] if title else []),
                                    *(f"- {b}" for b in bullets), "Layout: title "]))
    for name, box in zip(("", ", text ", ", picture "), boxes):
        if name:
            reply = reply.text(name)
        reply = reply.box(*box)
    reply = reply.text(".")
    reply = reply.image(seed=3) if picture else reply
    return reply.eos() if end else reply


@pytest.fixture
def replay(rt, tmp_path):
    """``replay(*replies)``: a session on ``rt`` (with a slides variant) replaying them."""
    rt.variants.register(TINY_SLIDES)

    def session_with(*replies):
        replay_runtime(replies, runtime=rt)
        return rt.open_session(artifact_dir=tmp_path / "artifacts")

    yield session_with
    stop_replay(rt)


def out_dir(tmp_path, turn: int) -> Path:
    return tmp_path / "artifacts" / f"turn-{turn:03d}" / "slides"


def emu(box, size=WIDE):
    """The (left, top, width, height) EMUs of 224-bin (cx, cy, w, h) on a slide of ``size``."""
    cx, cy, w, h = (b / BINS for b in box)
    x0, y0, x1, y1 = (cx - w / 2) * size[0], (cy - h / 2) * size[1], \
        (cx + w / 2) * size[0], (cy + h / 2) * size[1]
    return x0, y0, x1 - x0, y1 - y0


def shapes(page) -> dict:
    return {s.name: s for s in page.shapes}


def near(shape, rect, tol=2):
    return all(abs(a - b) <= tol for a, b in zip((shape.left, shape.top, shape.width,
                                                  shape.height), rect))


def bullet_texts(shape) -> list[str]:
    return [p.text for p in shape.text_frame.paragraphs]


def made(done) -> list[ImagePart]:
    return [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]


def fitted_inside(picture, region, aspect) -> bool:
    """``picture`` (a shape) lies in ``region`` (EMUs), touches it on two opposite sides, is
    centred in it and has the aspect ratio ``aspect`` (width / height)."""
    left, top, width, height = region
    inside = (picture.left >= left - 2 and picture.top >= top - 2
              and picture.left + picture.width <= left + width + 2
              and picture.top + picture.height <= top + height + 2)
    fills = abs(picture.width - width) <= 2 or abs(picture.height - height) <= 2
    centred = (abs(picture.left + picture.width / 2 - (left + width / 2)) <= 2
               and abs(picture.top + picture.height / 2 - (top + height / 2)) <= 2)
    return inside and fills and centred and abs(picture.width / picture.height - aspect) < 0.01


# --- recorded replies, parsed exactly ----------------------------------------------------------

def test_a_slide_reply_becomes_a_slide_action_a_deck_a_preview_and_a_record(replay, tmp_path):
    session = replay(slide_reply())
    done = session.ask("Make a slide about blue squares.", skill="slides", num_inference_steps=2)
    assert done.ok and done.finish_reason == "eos"
    (drawing,) = made(done)
    assert session.history[-1].variant == "tiny_slides"  # found by its role

    (action,) = done.actions
    assert (action.skill, action.action, action.version) == ("slides", "slide", 1)
    provenance = drawing.provenance.model_dump(mode="json")

    def region(bins):
        cx, cy, w, h = (b / BINS for b in bins)
        return {"box": [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], "bins": list(bins),
                "source": "model"}

    payload = action.payload
    assert payload["regions"].keys() == {"title", "text", "picture"}
    for name, bins in zip(("title", "text", "picture"), (TITLE_BOX, TEXT_BOX, PICTURE_BOX)):
        assert payload["regions"][name]["box"] == pytest.approx(region(bins)["box"])
        assert payload["regions"][name]["bins"] == list(bins)
        assert payload["regions"][name]["source"] == "model"
    assert {k: v for k, v in payload.items() if k != "regions"} == {
        "title": "Blue squares", "bullets": BULLETS, "aspect": "16:9",
        "drawing": {"image_id": drawing.image_id, "width": drawing.width,
                    "height": drawing.height, "provenance": provenance},
        "given": None, "text": payload["text"], "warnings": []}
    assert payload["text"].startswith("Title: Blue squares") and "Layout: title" in payload["text"]

    out = out_dir(tmp_path, 0)
    names = ["deck.pptx", "slide-01.png", "slides.json"]
    assert done.artifacts == tuple(str((out / n).resolve()) for n in names)

    deck = Presentation(out / "deck.pptx")
    assert (deck.slide_width, deck.slide_height) == WIDE
    (page,) = deck.slides
    found = shapes(page)
    assert found["title"].text_frame.text == "Blue squares"
    assert bullet_texts(found["text"]) == BULLETS
    assert near(found["title"], emu(TITLE_BOX)) and near(found["text"], emu(TEXT_BOX))
    # the picture is cut from the drawing at the picture box, and fitted in its region whole
    cut = seedx_slides.geometry.crop_box(region(PICTURE_BOX)["box"],
                                         (drawing.width, drawing.height))
    crop = session.get_image(drawing.image_id).convert("RGB").crop(cut)
    picture = found["picture"]
    assert fitted_inside(picture, emu(PICTURE_BOX), crop.width / crop.height)
    shown = Image.open(io.BytesIO(picture.image.blob)).convert("RGB")
    factor = shown.width // crop.width
    assert shown.size == (crop.width * factor, crop.height * factor)
    assert shown.resize(crop.size, Image.Resampling.NEAREST).tobytes() == crop.tobytes()

    preview = Image.open(out / "slide-01.png")
    assert preview.size == (960, 540)
    slide_provenance = {**provenance, "parents": [drawing.image_id]}
    assert json.loads(preview.text["seedx:provenance"]) == slide_provenance

    record = json.loads((out / "slides.json").read_text())
    assert (record["deck"], record["aspect"], record["slide_size_emu"]) == (
        "deck.pptx", "16:9", list(WIDE))
    (slide,) = record["slides"]
    assert (slide["number"], slide["title"], slide["bullets"], slide["preview"]) == (
        1, "Blue squares", BULLETS, "slide-01.png")
    assert slide["regions"]["text"]["emu"] == [found["text"].left, found["text"].top,
                                               found["text"].width, found["text"].height]
    assert slide["picture"] == {
        "kind": "cut", "crop_px": list(cut), **payload["drawing"],
        "placed_emu": [picture.left, picture.top, picture.width, picture.height]}
    assert slide["provenance"] == slide_provenance
    assert slide["warnings"] == [] and record["warnings"] == []


def test_each_slide_turn_adds_a_slide_to_the_same_deck(replay, tmp_path):
    session = replay(slide_reply(), slide_reply("Red circles", ["A circle has no corners."]))
    first = session.ask("Make a slide about blue squares.", skill="slides", num_inference_steps=2)
    second = session.ask("Make a slide about red circles.", skill="slides", num_inference_steps=2)
    assert first.ok and second.ok
    assert len(Presentation(out_dir(tmp_path, 0) / "deck.pptx").slides) == 1
    deck = Presentation(out_dir(tmp_path, 1) / "deck.pptx")
    assert [shapes(p)["title"].text_frame.text for p in deck.slides] == ["Blue squares",
                                                                        "Red circles"]
    assert bullet_texts(shapes(deck.slides[1])["text"]) == ["A circle has no corners."]
    assert [Path(a).name for a in second.artifacts] == ["deck.pptx", "slide-01.png",
                                                        "slide-02.png", "slides.json"]
    # the first slide is rebuilt from the stored action: the same preview, pixel for pixel
    again = Image.open(out_dir(tmp_path, 1) / "slide-01.png")
    assert again.tobytes() == Image.open(out_dir(tmp_path, 0) / "slide-01.png").tobytes()
    record = json.loads((out_dir(tmp_path, 1) / "slides.json").read_text())
    assert [s["title"] for s in record["slides"]] == ["Blue squares", "Red circles"]


def test_a_given_picture_is_placed_instead_of_the_cut_and_the_model_does_not_read_it(
        replay, tmp_path):
    poster = Image.open(ROOT / "examples" / "nano" / "scene.png").convert("RGB")
    session = replay(Reply().text("Here is a poster.").image(seed=5).eos(), slide_reply())
    session.ask("Design a poster.", num_inference_steps=2)  # version 1: a picture of the session
    (version,) = [v for v in session.versions() if v.number == 1]
    done = session.ask("Make a slide about blue squares.", ["version:1"], skill="slides",
                       num_inference_steps=2)
    assert done.ok
    turn = session.history[-1]
    assert turn.context.image_ids == ()  # the model laid the slide out from the words only
    given = done.actions[0].payload["given"]
    assert given["image_id"] == version.image_id
    deck = Presentation(out_dir(tmp_path, 1) / "deck.pptx")
    picture = shapes(deck.slides[0])["picture"]
    source = session.get_image(version.image_id).convert("RGB")
    assert fitted_inside(picture, emu(PICTURE_BOX), source.width / source.height)
    shown = Image.open(io.BytesIO(picture.image.blob)).convert("RGB")
    assert shown.resize(source.size, Image.Resampling.NEAREST).tobytes() == source.tobytes()
    record = json.loads((out_dir(tmp_path, 1) / "slides.json").read_text())
    assert record["slides"][0]["picture"]["kind"] == "given"
    assert record["slides"][0]["picture"]["image_id"] == version.image_id
    drawing = made(done)[0]
    assert record["slides"][0]["provenance"]["parents"] == [version.image_id, drawing.image_id]
    # a picture file given directly works the same way
    session.runtime.replay.push(slide_reply())
    direct = session.ask("Make a slide about blue squares.", [poster], skill="slides",
                         num_inference_steps=2)
    assert direct.actions[0].payload["given"]["image_id"] == content_hash(poster)


# --- malformed replies: a partial slide with warnings, never a lost turn -----------------------

DEFAULT = seedx_slides.layout.DEFAULT_REGIONS


@pytest.mark.parametrize("reply, expect, warning", [
    (slide_reply(title=None), {"title": ""}, "the reply has no title"),
    (slide_reply(boxes=(TITLE_BOX, TEXT_BOX, (220, 200, 100, 120))),
     {"picture_source": "clipped"}, "the picture box [220, 200, 100, 120] reaches past the canvas"),
    (slide_reply(boxes=((112, 27, 0, 27), TEXT_BOX, PICTURE_BOX)),
     {"title_source": "default"}, "the title box [112, 27, 0, 27] is empty on the canvas"),
    (slide_reply(boxes=()), {"title_source": "default", "text_source": "default",
                             "picture_source": "default"},
     "the layout gives no picture box: used the default picture region"),
    (Reply().text("Title: Blue squares\n- " + BULLETS[0] + "\nLayout: title ")
     .tokens("<box_start>", "<loc-3>", "<box_end>").text(", text ").box(*TEXT_BOX)
     .text(", picture ").box(*PICTURE_BOX).text(".").image(seed=3).eos(),
     {"title_source": "default"}, "the layout gives no title box"),
    (slide_reply(picture=False), {"picture": None}, "the reply has no drawing of the slide"),
    (slide_reply(picture=False, end=False).tokens("<img>", "<img_00000>", "<img_00001>").eos(),
     {"picture": None}, "an image was started but not produced"),
    (slide_reply(end=False).image(seed=4).eos(), {},
     "the reply has 2 pictures; the first is the slide drawing"),
    (Reply().text("I would rather not.").eos(),
     {"title": "I would rather not.", "picture": None}, "the reply has no 'Layout:' line"),
])
def test_a_malformed_reply_gives_a_partial_slide_with_warnings(replay, tmp_path, reply, expect,
                                                                warning):
    session = replay(reply)
    done = session.ask("Make a slide about blue squares.", skill="slides", num_inference_steps=2)
    assert done.ok and not done.errors  # the turn and its action stand
    (action,) = done.actions
    payload = action.payload
    assert any(warning in w for w in payload["warnings"]), payload["warnings"]
    for key, value in expect.items():
        if key.endswith("_source"):
            name = key.removesuffix("_source")
            assert payload["regions"][name]["source"] == value
            if value == "default":
                assert payload["regions"][name]["box"] == list(DEFAULT[name])
        elif key == "picture":
            assert payload["drawing"] is None
        else:
            assert payload[key] == value
    out = out_dir(tmp_path, 0)
    deck = Presentation(out / "deck.pptx")
    (page,) = deck.slides
    found = shapes(page)
    assert found["title"].text_frame.text == payload["title"]
    region = payload["regions"]["picture"]
    x0, y0, x1, y1 = region["box"]
    rect = (x0 * WIDE[0], y0 * WIDE[1], (x1 - x0) * WIDE[0], (y1 - y0) * WIDE[1])
    if payload["drawing"] is None:
        assert "picture" not in found
        assert Image.open(out / "slide-01.png").size == (960, 540)
        assert "no picture for the picture region: it is left empty" in json.loads(
            (out / "slides.json").read_text())["warnings"]
    else:
        assert found["picture"].left >= rect[0] - 2 and found["picture"].top >= rect[1] - 2
        assert found["picture"].left + found["picture"].width <= rect[0] + rect[2] + 2
    assert json.loads((out / "slides.json").read_text())["slides"][0]["warnings"][
        :len(payload["warnings"])] == payload["warnings"]
    # and the session goes on
    session.runtime.replay.push(slide_reply())
    assert session.ask("Make another.", skill="slides", num_inference_steps=2).ok
    assert len(Presentation(out_dir(tmp_path, 1) / "deck.pptx").slides) == 2


@pytest.mark.parametrize("text, images, words", [
    ("", 0, "say what the slide is about"),
    ("Make a slide about blue squares.", 2, "a slide has one picture region; got 2 images"),
])
def test_a_turn_the_skill_cannot_take_is_refused_before_the_model(replay, text, images, words):
    picture = Image.open(ROOT / "examples" / "nano" / "scene.png").convert("RGB")
    other = Image.open(ROOT / "examples" / "nano" / "person.png").convert("RGB")
    session = replay(slide_reply())
    done = session.ask(text, [picture, other][:images], skill="slides")
    (error,) = done.errors
    assert error.source == "skill:slides" and words in error.message
    assert len(session.runtime.replay) == 1  # the model never ran
    assert session.ask("Make a slide.", skill="slides", num_inference_steps=2).ok


def test_boxes_outside_the_layout_or_naming_no_region_are_ignored():
    from seedx_agent import BoxPart, TextPart

    read = seedx_slides.layout.read_slide([
        TextPart(text="Title: Blue squares "), BoxPart(bins=(1, 2, 3, 4)),
        TextPart(text="\n- One. - Two.\nLayout: title"), BoxPart(bins=TITLE_BOX),
        TextPart(text=", and"), BoxPart(bins=(9, 9, 9, 9)),
        TextPart(text=", picture"), BoxPart(bins=PICTURE_BOX),
        TextPart(text=", image"), BoxPart(bins=(50, 50, 20, 20))])
    assert (read.title, read.bullets) == ("Blue squares", ["One.", "Two."])
    assert read.regions["title"].bins == TITLE_BOX and read.regions["picture"].bins == PICTURE_BOX
    assert read.regions["text"].source == "default"
    assert read.warnings == [
        "ignored a box before the 'Layout:' line: [1, 2, 3, 4]",
        "ignored a box that names no region: [9, 9, 9, 9]",
        "ignored a second picture box: [50, 50, 20, 20]",
        "the layout gives no text box: used the default text region"]


def test_an_earlier_slide_that_cannot_be_read_is_left_out_with_a_warning(tmp_path):
    from seedx_agent import Action, SkillContext

    skill = seedx_slides.SlidesSkill()
    regions = {n: {"box": list(DEFAULT[n]), "source": "default"} for n in DEFAULT}
    this = skill.make_action("slide", {"title": "Now", "regions": regions})
    stale = Action(skill="slides", action="slide", version=1, payload={"title": 3})
    result = skill.run(this, SkillContext(artifact_dir=tmp_path, get_image=lambda i: None,
                                          earlier_actions=(stale,)))
    assert [shapes(p)["title"].text_frame.text
            for p in Presentation(tmp_path / "deck.pptx").slides] == ["Now"]
    assert "an earlier slide could not be read (ValidationError); it is left out of the deck" \
        in result.warnings


def test_a_named_variant_without_the_role_is_refused(replay):
    done = replay(slide_reply()).ask("Make a slide.", skill="slides", variant="seed_x_i")
    (error,) = done.errors
    assert error.source == "variant" and "'seed_x_i' does not declare it" in error.message


def test_a_4_3_request_gives_a_4_3_deck(replay, tmp_path):
    session = replay(slide_reply())
    assert session.ask("Make a 4:3 slide about blue squares.", skill="slides",
                       num_inference_steps=2).ok
    deck = Presentation(out_dir(tmp_path, 0) / "deck.pptx")
    assert (deck.slide_width, deck.slide_height) == (9144000, 6858000)
    assert near(shapes(deck.slides[0])["title"], emu(TITLE_BOX, (9144000, 6858000)))


def test_the_skill_is_a_plugin_like_any_other():
    from seedx_agent.plugins import get_plugins
    from seedx_agent.skill_host import SkillHost

    assert 'slides = "seedx_slides"' in (ROOT / "pyproject.toml").read_text()
    assert "slides" in [p["name"] for p in get_plugins()]
    skill = SkillHost().get("slides")
    assert isinstance(skill, seedx_slides.SlidesSkill)
    assert (skill.variant_role, skill.model_reads_images) == ("slides", False)


# --- the shipped SEED-X Nano --------------------------------------------------------------------

HELD_OUT = 7 * 10**8  # above EVAL_SEED_BASE: never trained on, apart from the other tests' seeds


def test_the_nano_deck_title_names_the_requested_shape(nano, tmp_path):
    """20 held-out requests through the skill, each the first turn of its session; the title of
    the reopened deck must name the shape asked for. Measured on the shipped weights: 20 of 20
    (and 20 of 20 with the exact title, the exact bullets and all three boxes)."""
    from seedx_nano import tasks

    right = []
    for i in range(20):
        seed = tasks.EVAL_SEED_BASE + HELD_OUT + i
        ex = tasks.make_example("slide", random.Random(seed))
        session = nano.open_session(artifact_dir=tmp_path / str(i))
        done = session.ask(ex.instruction, skill="slides", seed=seed)
        assert done.ok, done.errors
        assert session.history[-1].variant == "slide"  # found by its role
        deck = next(a for a in done.artifacts if a.endswith("deck.pptx"))
        title = shapes(Presentation(deck).slides[0])["title"].text_frame.text.lower()
        right.append(f"{ex.meta['shape']}s" in title.split())
    assert sum(right) >= 16, f"{sum(right)}/20 deck titles name the requested shape"


def run_example(tmp_path) -> tuple[Path, list[dict]]:
    from seedx_agent import cli

    out = tmp_path / "out"
    assert cli.main(["run", str(ROOT / "examples" / "slides.yaml"), "--out", str(out)]) == 0
    return out, json.loads((out / "transcript.json").read_text())["turns"]


def picture_in_region(picture, payload) -> bool:
    x0, y0, x1, y1 = payload["regions"]["picture"]["box"]
    left, top, right, bottom = x0 * WIDE[0], y0 * WIDE[1], x1 * WIDE[0], y1 * WIDE[1]
    return (picture.left >= left - 2 and picture.top >= top - 2
            and picture.left + picture.width <= right + 2
            and picture.top + picture.height <= bottom + 2)


def test_examples_slides_yaml_runs_on_the_nano(nano, tmp_path):
    from seedx_nano import tasks

    out, turns = run_example(tmp_path)
    assert [t["variant"] for t in turns] == ["slide", "designer", "slide"]
    assert not [e for t in turns for e in t["errors"]]
    first, _poster, second = turns
    assert [Path(a).name for a in second["artifacts"]] == [
        "deck.pptx", "slide-01.png", "slide-02.png", "slides.json"]
    deck_path = out / second["artifacts"][0]
    deck = Presentation(deck_path)
    assert len(deck.slides) == 2
    # the first slide, as the Nano laid it out: its title, its bullets, its picture in place
    payload = first["actions"][0]["payload"]
    found = shapes(deck.slides[0])
    assert found["title"].text_frame.text == "Blue squares"
    assert bullet_texts(found["text"]) == tasks.slide_bullets("blue", "square")
    assert {r["source"] for r in payload["regions"].values()} == {"model"}
    for name in ("title", "text"):
        assert near(found[name], emu(payload["regions"][name]["bins"]))
    assert picture_in_region(found["picture"], payload)
    # the second shows the poster of turn 2 (given as version:2), not a cut of its drawing
    poster = next(p for p in turns[1]["parts"] if p["type"] == "image")
    record = json.loads((deck_path.parent / "slides.json").read_text())
    assert [s["picture"]["kind"] for s in record["slides"]] == ["cut", "given"]
    assert record["slides"][1]["picture"]["image_id"] == poster["image_id"]
    assert picture_in_region(shapes(deck.slides[1])["picture"],
                             second["actions"][0]["payload"])


def test_a_second_slide_in_a_session_is_laid_out_right_on_the_nano(nano, tmp_path):
    from seedx_nano import tasks

    _out, turns = run_example(tmp_path)
    payload = turns[2]["actions"][0]["payload"]
    assert payload["title"] == "Red circles"
    assert list(payload["bullets"]) == tasks.slide_bullets("red", "circle")
    assert {r["source"] for r in payload["regions"].values()} == {"model"}
