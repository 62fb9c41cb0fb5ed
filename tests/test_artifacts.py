"""seedx_agent.artifacts: the pictures skills write carry their provenance and are checked."""

import pytest
from PIL import Image

from seedx_agent import ImagePart, Provenance, load_picture, read_provenance, save_png


def test_a_saved_png_carries_its_provenance_and_nothing_half_written(tmp_path):
    made = Provenance(model="nano", variant="designer", seed=7, num_inference_steps=10,
                      guidance_scale=1.5, parents=("a" * 64,))
    path = save_png(Image.new("RGB", (8, 4), (200, 10, 10)), tmp_path / "p.png", made)
    assert read_provenance(path) == made
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left behind
    assert read_provenance(save_png(Image.new("RGB", (2, 2)), tmp_path / "q.png")) is None


def test_load_picture_refuses_pixels_of_another_size():
    part = ImagePart(image_id="b" * 64, width=8, height=4)
    assert load_picture(lambda _id: Image.new("L", (8, 4)), part).mode == "RGB"
    with pytest.raises(ValueError, match=r"is \(4, 4\), the action says \(8, 4\)"):
        load_picture(lambda _id: Image.new("RGB", (4, 4)), part)
