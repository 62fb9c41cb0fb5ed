"""Draw the input pictures of the README demo and examples/tryon.yaml from the Nano's world:
``python examples/nano/make_pictures.py``.

The pictures are committed beside this file; this script says how they were made (fixed seeds
above every training seed, so the Nano never saw them) and redraws them byte for byte.
"""

from __future__ import annotations

import random
from pathlib import Path

from seedx_nano import tasks, world

HERE = Path(__file__).resolve().parent
SEED = tasks.EVAL_SEED_BASE + 9 * 10**8  # never drawn by training or by `seedx eval nano`


def pictures() -> dict[str, "world.Image.Image"]:
    rng = random.Random(SEED)
    scene = world.random_scene(rng, n_objects=3, width=192, height=128, background="white")
    person = world.random_person(random.Random(SEED + 1), width=80, height=128)
    garment = world.Garment("green", "striped")
    return {"scene.png": scene.render(), "person.png": person.render(),
            "garment.png": garment.render(64),
            "garment_blue.png": world.Garment("blue", "dotted").render(72)}  # examples/tryon.yaml


def main() -> None:
    for name, image in pictures().items():
        image.save(HERE / name)
        print(f"wrote {HERE / name} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
