"""Behaviour of the shipped SEED-X Nano (``core_models/assets/nano``), through the agent.

These run as soon as the trained weights are committed: the module is skipped while
``nano_manifest.json`` does not list the ViT, VAE, LLM and stage-1 de-tokenizer as finished,
and each test that needs a later stage (stage-2 de-tokenizer, an adapter) skips until it ships.
Decoding is greedy and the pictures' seeds are fixed, so every result is deterministic.
"""

from __future__ import annotations

import json

import pytest

from seedx_agent.presets import nano_dir, nano_finished_stages, nano_manifest, shipped_nano_finished

pytestmark = pytest.mark.skipif(not shipped_nano_finished(),
                                reason="the shipped SEED-X Nano has not finished training yet "
                                       "(core_models/assets/nano/nano_manifest.json)")


def needs(*stages: str, adapter: str | None = None):
    missing = [s for s in stages if s not in nano_finished_stages()]
    adapters = (nano_manifest() or {}).get("adapters", [])
    reason = (f"not trained yet: {', '.join(missing)}" if missing else
              f"adapter {adapter!r} not shipped" if adapter and adapter not in adapters else None)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def nano():
    import torch

    from seedx_agent.runtime import Runtime

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Runtime.from_pretrained("nano")
    torch.set_num_threads(threads)


def two_objects():
    from core_models.nano.world import Obj, Scene

    return Scene(128, 96, "white", (Obj("square", "blue", 0, 0, 36).at(10, 40),
                                    Obj("circle", "red", 0, 0, 32).at(80, 12)))


def test_the_nano_is_the_default_and_says_what_it_is(nano):
    from seedx_agent import cli, presets

    assert presets.DEFAULT_PRESET == "nano" and cli.DEFAULT_MODEL == "nano"
    assert nano.name == "nano" and not nano.untrained
    assert nano_manifest()["bytes"] <= 40 * 1024 * 1024
    assert sum(p.stat().st_size for p in nano_dir().rglob("*") if p.is_file()) <= 40 * 1024 * 1024


def test_the_blue_square_is_found(nano):
    from core_models.nano.metrics import iou
    from seedx_agent.types import BoxPart

    scene = two_objects()
    done = nano.open_session().ask("Where is the blue square?", [scene.render()], max_new_tokens=48)
    boxes = [p.pixel_xyxy for p in done.parts if isinstance(p, BoxPart) and p.pixel_xyxy]
    assert boxes, done.parts
    assert iou(boxes[0], scene.objects[0].bbox) >= 0.5


def test_it_describes_and_counts(nano):
    from core_models.nano.metrics import caption_attr_accuracy, count_correct
    from seedx_agent.types import TextPart

    scene = two_objects()
    image = scene.render()
    text = lambda done: "".join(p.text for p in done.parts if isinstance(p, TextPart))  # noqa: E731
    described = nano.open_session().ask("Describe the image.", [image], max_new_tokens=48)
    assert caption_attr_accuracy(text(described), scene) == 1.0, text(described)
    counted = nano.open_session().ask("How many shapes are there?", [image], max_new_tokens=24)
    assert count_correct(text(counted), scene), text(counted)


@needs("detok1")
def test_it_draws_a_red_circle(nano):
    from core_models.nano.metrics import t2i_correct
    from seedx_agent.types import ImagePart

    session = nano.open_session()
    done = session.ask("Draw a red circle.", max_new_tokens=64)
    made = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "generated"]
    assert made, done.parts
    assert t2i_correct(session.get_image(made[0].image_id), "red", "circle")


@needs("detok2", adapter="seed_x_edit")
def test_it_recolours_the_square(nano):
    from core_models.nano.metrics import edit_correct
    from core_models.nano.world import Edit
    from seedx_agent.types import ImagePart

    scene = two_objects()
    session = nano.open_session()
    done = session.ask("Make the square green.", [scene.render()], edit=True, max_new_tokens=64)
    made = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert made and made[0].provenance.detokenizer_stage == 2
    assert edit_correct(scene, session.get_image(made[0].image_id), Edit("recolor", 0, colour="green"))


@needs("detok2", adapter="tryon")
def test_it_dresses_the_person(nano):
    import random

    from core_models.nano import tasks
    from core_models.nano.metrics import tryon_correct
    from seedx_agent.types import ImagePart

    ex = tasks.make_example("tryon", random.Random(tasks.EVAL_SEED_BASE + 42))
    session = nano.open_session()
    done = session.ask(ex.instruction, ex.images, variant="tryon", max_new_tokens=64)
    made = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert made, done.parts
    assert tryon_correct(session.get_image(made[0].image_id), ex.meta["garment"])


def test_eval_smoke_on_the_shipped_weights(capsys):
    """What CI runs: ``seedx eval nano --smoke --json`` (the full ``seedx eval nano`` stays out)."""
    from core_models.nano.evaluate import METRIC_KEYS
    from seedx_agent import cli

    assert cli.main(["eval", "nano", "--smoke", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    scores = json.loads(out[-1])
    assert list(scores) == list(METRIC_KEYS)
    assert scores["grounding_miou"] is not None and scores["count_acc"] is not None
