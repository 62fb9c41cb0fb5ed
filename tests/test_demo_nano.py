"""The README demo, ``seedx run examples/demo.yaml --out DIR``, on the shipped SEED-X Nano.

What a newcomer sees must be what the demo says it is: the Nano answered every turn without an
error, the grounding box lies on the scene that came in the first turn (a follow-up question
about a picture of the conversation), the edit and the try-on were drawn from their sources, the
drawing from text alone, and ``index.html`` shows all of it. The demo pictures are redrawn
byte for byte by their script, so they are world scenes the Nano never trained on.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from PIL import Image

from seedx_agent import cli

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from seedx_nano.manifest import is_finished

    if not is_finished():
        pytest.skip("the shipped Nano has not finished training")
    out = tmp_path_factory.mktemp("nano-demo") / "out"
    assert cli.main(["run", str(DEMO), "--out", str(out)]) == 0
    return out, json.loads((out / "transcript.json").read_text())


def test_the_demo_pictures_are_what_their_script_draws():
    pictures = runpy.run_path(str(ROOT / "examples" / "nano" / "make_pictures.py"))["pictures"]()
    for name, image in pictures.items():
        with Image.open(ROOT / "examples" / "nano" / name) as committed:
            assert committed.convert("RGB").tobytes() == image.tobytes(), name


def test_the_demo_runs_every_turn_on_the_nano(demo):
    out, transcript = demo
    assert transcript["runtime"]["model"] == "nano" and transcript["runtime"]["untrained"] is False
    turns = transcript["turns"]
    assert len(turns) == 6 and [t["errors"] for t in turns] == [[]] * 6
    roles = [[i["role"] for i in t["images"]] for t in turns]
    assert roles == [["generated"], ["input"], [], [], ["edited"], ["input", "input", "edited"]]
    drawing = turns[0]["images"][0]["image_id"]
    scene = turns[1]["images"][0]["image_id"]
    # grounding: a follow-up about the scene, so the box is on the scene's own pixels
    boxes = [p for p in turns[2]["parts"] if p["type"] == "box"]
    assert boxes and all(b["target_image"] == scene and b["pixel_xyxy"] for b in boxes)
    assert turns[2]["actions"] and any(a.endswith("coco.json") for a in turns[2]["artifacts"])
    # the edit of the scene (not of the drawing), on SEED-X-Edit
    edit = next(p for p in turns[4]["parts"] if p["type"] == "image")
    assert turns[4]["variant"] == "seed_x_edit" and edit["provenance"]["parents"] == [scene]
    assert drawing not in edit["provenance"]["parents"]
    # the try-on skill: the person is the condition, the garment the second input
    person, garment = (i["image_id"] for i in turns[5]["images"][:2])
    dressed = [p for p in turns[5]["parts"] if p["type"] == "image"][-1]
    assert turns[5]["variant"] == "tryon" and dressed["provenance"]["parents"][0] == person
    assert garment in dressed["provenance"]["parents"]
    assert {Path(a).name for a in turns[5]["artifacts"]} >= {"result.png", "strip.png"}
    page = (out / "index.html").read_text()
    assert page.count("class='turn'") == 6 and "class='box'" in page
