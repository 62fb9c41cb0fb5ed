"""Behaviour of the shipped SEED-X Nano (``plugins/seedx_nano/weights``), through the agent.

The Nano shipped today comes from a short first training run (docs/model_card_nano.md): it has
learned to count, to name colours and shapes and to dress a person, but not yet to ground, draw or
edit reliably. The tests below assert what it does measurably better than chance on held-out
scenes, and the known gaps are strict ``xfail``s: when a retrained Nano closes one, the test
fails until it is turned into a plain assertion. Decoding is greedy and picture seeds are fixed,
so every result is deterministic.
"""

from __future__ import annotations

import json
import random

import pytest

from seedx_nano.manifest import WEIGHTS_DIR, is_finished, read_manifest

pytestmark = pytest.mark.skipif(not is_finished(),
                                reason="the shipped SEED-X Nano has not finished training yet "
                                       "(plugins/seedx_nano/weights/nano_manifest.json)")
LIMIT = 40 * 1024 * 1024




def held_out(task: str, n: int):
    from seedx_nano import tasks

    return [tasks.make_example(task, random.Random(tasks.EVAL_SEED_BASE + 7000 + i)) for i in range(n)]


def text_of(done) -> str:
    from seedx_agent.types import TextPart

    return "".join(p.text for p in done.parts if isinstance(p, TextPart))


def two_objects():
    from seedx_nano.world import Obj, Scene

    return Scene(128, 96, "white", (Obj("square", "blue", 0, 0, 36).at(10, 40),
                                    Obj("circle", "red", 0, 0, 32).at(80, 12)))


def test_the_nano_loads_within_budget_and_says_what_it_is(nano):
    import seedx_agent
    from seedx_nano.manifest import STAGE_COMPONENTS

    assert nano.name == "nano" and not nano.untrained
    assert set(STAGE_COMPONENTS) <= set(read_manifest()["finished_stages"])
    assert sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file()) <= LIMIT
    assert {"seed_x_i", "seed_x_edit", "tryon", "slide", "story", "designer"} <= set(nano.adapters.loaded) | set(nano.variants.names())
    assert seedx_agent.default_preset() == "nano"  # trained: the default model
    assert "world of coloured shapes" in nano.notice and "model_card_nano.md" in nano.notice


def test_it_counts_held_out_scenes(nano):
    from seedx_nano.metrics import count_correct

    examples = held_out("count", 12)
    right = sum(count_correct(text_of(nano.open_session().ask(ex.instruction, ex.images,
                                                              max_new_tokens=24)), ex.meta["scene"])
                for ex in examples)
    assert right / len(examples) >= 0.6  # 1-3 shapes: chance is 1/3


def test_it_names_colours_and_shapes(nano):
    from seedx_nano.metrics import caption_attr_accuracy

    examples = held_out("describe", 12)
    scores = [caption_attr_accuracy(text_of(nano.open_session().ask(ex.instruction, ex.images,
                                                                    max_new_tokens=48)),
                                    ex.meta["scene"]) for ex in examples]
    assert sum(scores) / len(scores) >= 0.3  # a random colour+shape guess is right 1 time in 18


def test_it_dresses_the_person(nano):
    from seedx_nano.metrics import tryon_correct
    from seedx_agent.types import ImagePart

    examples = held_out("tryon", 6)
    right = 0
    for ex in examples:
        session = nano.open_session()
        done = session.ask(ex.instruction, ex.images, variant="tryon", max_new_tokens=64)
        made = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
        right += bool(made) and tryon_correct(session.get_image(made[0].image_id), ex.meta["garment"])
    assert right / len(examples) >= 0.6  # six colours: chance is 1/6


def test_it_draws_what_it_is_asked(nano):
    """"Draw a {colour} {shape}." on held-out requests, a seed per request (measured at n = 200:
    0.945)."""
    from seedx_nano import tasks
    from seedx_nano.metrics import t2i_correct
    from seedx_agent.types import ImagePart

    examples = [tasks.make_example("draw", random.Random(tasks.EVAL_SEED_BASE + 7100 + i),
                                   position=None) for i in range(10)]
    right = 0
    for i, ex in enumerate(examples):
        session = nano.open_session()
        done = session.ask(ex.instruction, max_new_tokens=64, seed=100 + i)
        made = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
        right += bool(made) and t2i_correct(session.get_image(made[0].image_id),
                                            ex.meta["colour"], ex.meta["shape"])
    assert right / len(examples) >= 0.7  # 18 colour-shape pairs: chance is 1/18


@pytest.mark.xfail(strict=True, reason="known gap: grounding mIoU 0.10 at n = 200 (docs/nano.md, "
                                       "'Grounding')")
def test_the_blue_square_is_found(nano):
    from seedx_nano.metrics import iou
    from seedx_agent.types import BoxPart

    scene = two_objects()
    done = nano.open_session().ask("Where is the blue square?", [scene.render()], max_new_tokens=48)
    boxes = [p.pixel_xyxy for p in done.parts if isinstance(p, BoxPart) and p.pixel_xyxy]
    assert boxes and iou(boxes[0], scene.objects[0].bbox) >= 0.5


@pytest.mark.xfail(strict=True, reason="known gap: edits 0.055 at n = 200, stage 2 redraws the scene")
def test_it_recolours_the_square(nano):
    from seedx_nano.metrics import edit_correct
    from seedx_nano.world import Edit
    from seedx_agent.types import ImagePart

    scene = two_objects()
    session = nano.open_session()
    done = session.ask("Make the square green.", [scene.render()], edit=True, max_new_tokens=64)
    made = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert made and made[0].provenance.detokenizer_stage == 2
    assert edit_correct(scene, session.get_image(made[0].image_id), Edit("recolor", 0, colour="green"))


def test_eval_smoke_on_the_shipped_weights():
    """What CI runs: ``seedx eval nano --smoke --json`` (the full ``seedx eval nano`` stays out)."""
    from seedx_nano.evaluate import METRIC_KEYS
    from test_nano_eval import seedx_eval

    result = seedx_eval("nano", "--smoke", "--json")
    assert result.exit_code == 0, result.output
    out = result.stdout.strip().splitlines()
    scores = json.loads(out[-1])
    assert list(scores)[:len(METRIC_KEYS)] == list(METRIC_KEYS)
    assert all(scores[k] is not None for k in METRIC_KEYS)
