"""The built-in grounding skill, end to end through the SkillHost, on real pictures."""

import hashlib
import json

import pytest
from PIL import Image

import seedx_grounding
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import SkillContext, SkillReply, SkillRequest
from seedx_agent.types import BoxPart, ImagePart, TextPart

CAR = BoxPart(bins=(112, 112, 56, 112), phrase="red car")  # centre, 1/4 wide, 1/2 high
SUN = BoxPart(bins=(28, 28, 28, 28), phrase="sun")
FLAT = BoxPart(bins=(100, 100, 0, 10), phrase="line")       # zero width: degenerate


def picture(width, height, rgb):
    image = Image.new("RGB", (width, height), rgb)
    part = ImagePart(image_id=hashlib.sha256(image.tobytes() + bytes(str(image.size), "ascii"))
                     .hexdigest(), width=width, height=height)
    return image, part


@pytest.fixture
def turn(tmp_path):
    """A turn about two input pictures (a square one, then a 320x160 one) with three boxes."""
    square, square_part = picture(100, 100, (0, 0, 0))
    wide, wide_part = picture(320, 160, (128, 128, 128))
    images = {square_part.image_id: square, wide_part.image_id: wide}
    reply = SkillReply(
        request=SkillRequest(text="Where are the car and the sun?",
                             images=(square_part, wide_part)),
        parts=(TextPart(text="The car is at"), CAR, TextPart(text="and the sun at"), SUN, FLAT))
    context = SkillContext(artifact_dir=tmp_path, get_image=images.__getitem__)
    return reply, context, wide_part


def test_grounding_end_to_end(turn, tmp_path):
    reply, context, wide = turn
    host = SkillHost()
    assert "grounding" in [s.name for s in host.select(reply)]  # chosen because it has boxes
    events = list(host.dispatch(reply, context, default_skill="grounding"))

    assert [e.type for e in events] == ["action_event"] * 3
    payloads = [e.action.payload for e in events]
    assert [(e.action.skill, e.action.action, e.action.version) for e in events] == \
        [("grounding", "locate", 1)] * 3
    car, sun, flat = payloads
    # on the last input image, in its own (non-square) pixels
    assert car["image_id"] == wide.image_id and car["image_size"] == [320, 160]
    assert car["bins"] == [112, 112, 56, 112]
    assert car["pixel_xyxy"] == [120.0, 40.0, 200.0, 120.0]
    assert sun["pixel_xyxy"] == [20.0, 10.0, 60.0, 30.0]
    assert flat["warnings"] and "no area" in flat["warnings"][0]

    out = tmp_path / "grounding"
    crops = sorted(p.name for p in out.glob("crop_*.png"))
    assert crops == ["crop_00_red-car.png", "crop_01_sun.png"]  # none for the degenerate box
    assert Image.open(out / "crop_00_red-car.png").size == (80, 80)
    assert Image.open(out / "crop_01_sun.png").size == (40, 20)

    annotated = Image.open(out / f"annotated_{wide.image_id[:12]}.png").convert("RGB")
    assert annotated.size == (320, 160)
    red = seedx_grounding.PALETTE[0]  # category 1 = "red car"
    assert annotated.getpixel((120, 80)) == red     # left edge of the car's box
    assert annotated.getpixel((199, 80)) == red     # right edge
    assert annotated.getpixel((160, 80)) == (128, 128, 128)  # inside is untouched

    coco = json.loads((out / "coco.json").read_text())
    assert coco["images"] == [{"id": 1, "file_name": f"{wide.image_id}.png", "width": 320,
                               "height": 160, "seedx_image_id": wide.image_id}]
    assert coco["categories"] == [{"id": 1, "name": "red car"}, {"id": 2, "name": "sun"}]
    assert [(a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"])
            for a in coco["annotations"]] == [(1, 1, [120.0, 40.0, 80.0, 80.0], 6400.0, 0),
                                              (1, 2, [20.0, 10.0, 40.0, 20.0], 800.0, 0)]
    assert len({a["id"] for a in coco["annotations"]}) == 2

    results = context.results
    assert [r.action for r in results] == [e.action for e in events]
    assert results[0].message == "red car: (120, 40) to (200, 120)"
    assert results[2].warnings == tuple(flat["warnings"])


def test_rerunning_an_action_does_not_duplicate_it(turn, tmp_path):
    reply, context, _ = turn
    skill = seedx_grounding.GroundingSkill()
    (car, *_) = skill.to_actions(reply)
    skill_context = context.for_skill("grounding")
    skill_context.artifact_dir.mkdir()
    skill.run(car, skill_context)
    skill.run(car, skill_context)
    coco = json.loads((tmp_path / "grounding" / "coco.json").read_text())
    assert len(coco["annotations"]) == 1


def test_boxes_on_a_generated_picture(tmp_path):
    drawn, drawn_part = picture(64, 32, (255, 255, 255))
    drawn_part = drawn_part.model_copy(update={"role": "generated"})
    reply = SkillReply(request=SkillRequest(text="Draw a car and box it"),
                       parts=(drawn_part, TextPart(text="The car:"), CAR))
    context = SkillContext(artifact_dir=tmp_path, get_image={drawn_part.image_id: drawn}.get)
    (event,) = SkillHost().dispatch(reply, context, default_skill="grounding")
    assert event.action.payload["image_id"] == drawn_part.image_id
    assert event.action.payload["pixel_xyxy"] == [24.0, 8.0, 40.0, 24.0]
    assert Image.open(tmp_path / "grounding" / "crop_00_red-car.png").size == (16, 16)


def test_a_box_on_no_picture_is_skipped(tmp_path):
    reply = SkillReply(request=SkillRequest(text="hi"), parts=(CAR,))
    assert seedx_grounding.GroundingSkill().to_actions(reply) == []
