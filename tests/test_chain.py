"""Skills chained in one session as one script (examples/chain.yaml), on the shipped Nano: a
designer poster, edited twice, the second edit undone, then the first edit put on a slide."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_examples_chain_yaml_runs_as_one_session(nano, tmp_path):
    from pptx import Presentation

    from seedx_agent import cli

    out = tmp_path / "out"
    assert cli.main(["run", str(ROOT / "examples" / "chain.yaml"), "--out", str(out)]) == 0
    transcript = json.loads((out / "transcript.json").read_text())
    turns = transcript["turns"]
    assert [t["errors"] for t in turns] == [[]] * 5
    assert [t["request"]["skill"] for t in turns] == ["designer"] * 3 + [None, "slides"]
    assert [a["action"] for a in turns[0]["actions"]] == ["design"]
    assert [a["action"] for t in turns[1:3] for a in t["actions"]] == ["edit", "edit"]

    versions = transcript["versions"]
    # poster, its edit, the edit of that edit; the slide's own drawing comes after
    assert [(v["number"], v["parent"]) for v in versions[:3]] == [(1, None), (2, 1), (3, 2)]
    assert turns[3]["request"]["revert_to"] == 2
    assert turns[3]["images"][0]["image_id"] == versions[1]["image_id"]

    # the slide places version 2 (the first edit), not the undone version 3
    slide_turn = turns[4]
    assert slide_turn["variant"] == "slide"
    assert slide_turn["model_images"] == []  # the slides skill lays out from the words
    (deck_path,) = [a for a in slide_turn["artifacts"] if a.endswith("deck.pptx")]
    deck = Presentation(str(out / deck_path))
    (slide,) = deck.slides
    (picture,) = [s for s in slide.shapes if s.shape_type == 13]  # MSO_SHAPE_TYPE.PICTURE
    wanted, undone = (Image.open(out / versions[i]["file"]).convert("RGB") for i in (1, 2))
    blob = Image.open(io.BytesIO(picture.image.blob)).convert("RGB")  # enlarged by a whole factor
    assert blob.width % wanted.width == 0 and blob.width * wanted.height == blob.height * wanted.width
    placed = np.asarray(blob.resize(wanted.size, Image.Resampling.BOX), dtype=float)
    wanted, undone = np.asarray(wanted, dtype=float), np.asarray(undone, dtype=float)
    assert np.abs(placed - wanted).mean() < 1.0 < np.abs(placed - undone).mean()
    texts = [s.text_frame.text for s in slide.shapes if s.has_text_frame]
    assert any("circle" in t.lower() for t in texts)
