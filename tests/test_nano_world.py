"""SEED-X Nano's world, tasks, analyser and metrics (issue 4): no model involved."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from seedx_nano import world
from seedx_nano.analyser import analyse, analyse_garment, analyse_person
from seedx_nano.metrics import (PSNR_CAP, caption_attr_accuracy, count_correct, edit_correct,
                                      grounding_iou, iou, parse_caption, psnr_outside,
                                      t2i_correct, tryon_correct)
from seedx_nano.tasks import (EVAL_SEED_BASE, TASKS, TRAIN_SEED_BASE, Example, box_tokens,
                                    caption, iter_examples, loc_bins, make_example, parse_boxes,
                                    sample_task)
from seedx_nano.world import (COLOURS, POSITIONS, Edit, Garment, Obj, Scene, boxes_clash,
                                    dress, move, object_gap, place, position_of, random_garment,
                                    random_person, random_scene, shirt_region)


def _matches(scene: Scene, detections, min_iou: float) -> int:
    """How many of the scene's objects the detections find (shape, colour and box)."""
    hits = 0
    for obj in scene.objects:
        hits += any((d.shape, d.colour) == (obj.shape, obj.colour)
                    and iou(d.bbox, obj.bbox) >= min_iou for d in detections)
    return hits


def _blurry(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A stand-in for a Nano output: soft edges and colour noise."""
    soft = np.asarray(image.filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
    noisy = soft + rng.normal(0, 6, soft.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


# --- the world ------------------------------------------------------------------------------------


def test_scenes_are_deterministic_by_seed():
    a, b = random_scene(random.Random(5)), random_scene(random.Random(5))
    assert a == b and a.render().tobytes() == b.render().tobytes()
    assert random_scene(random.Random(6)) != a


def test_scenes_respect_sizes_aspect_and_spacing():
    for seed in range(300):
        scene = random_scene(random.Random(seed))
        w, h = scene.width, scene.height
        assert 48 <= w <= 256 and 48 <= h <= 256 and max(w, h) / min(w, h) <= 4.0
        assert 1 <= len(scene.objects) <= 3
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)
        for i, obj in enumerate(scene.objects):
            assert 0.15 * min(w, h) <= obj.size <= 0.45 * min(w, h)
            x0, y0, x1, y1 = obj.bbox
            assert x0 >= 1 and y0 >= 1 and x1 <= w - 1 and y1 <= h - 1
            assert all(v == int(v) for v in obj.bbox)
            for other in scene.objects[i + 1:]:
                assert not boxes_clash(obj.bbox, other.bbox, object_gap(w, h))
    sizes = {random_scene(random.Random(s)).render().size for s in range(200)}
    assert any(w > 2 * h for w, h in sizes) and any(h > 2 * w for w, h in sizes)


def test_moves_land_in_the_requested_region_or_fail_cleanly():
    moved = 0
    for seed in range(100):
        scene = random_scene(random.Random(seed))
        for position in POSITIONS:
            after = move(scene, 0, position)
            if after is None:
                continue
            moved += 1
            assert position_of(after.objects[0], after) == position
            assert after.objects[1:] == scene.objects[1:]
            for other in after.objects[1:]:
                assert not boxes_clash(after.objects[0].bbox, other.bbox,
                                       object_gap(scene.width, scene.height))
    assert moved > 300
    # a big object cannot go to the left when the left is full
    blocker = Obj("square", "red", 0, 0, 40).at(2, 2)
    crowded = Scene(64, 64, "white", (blocker, Obj("circle", "blue", 0, 0, 28).at(34, 34)))
    assert move(crowded, 1, "left") is None
    empty = Scene(100, 60, "white", ())
    legal = Obj("triangle", "green", 0, 0, 27)                  # 45 % of the shorter side
    for position in POSITIONS:
        assert position_of(place(empty, legal, position), empty) == position


# --- the analyser ---------------------------------------------------------------------------------


def test_analyser_is_exact_on_500_ground_truth_scenes():
    objects = hits = exact_scenes = 0
    for seed in range(500):
        scene = random_scene(random.Random(EVAL_SEED_BASE + seed))
        found = analyse(scene.render())
        n = _matches(scene, found, 0.9)
        objects += len(scene.objects)
        hits += n
        exact_scenes += n == len(scene.objects) == len(found)
    assert hits / objects >= 0.99
    assert exact_scenes / 500 >= 0.99


def test_tolerant_analyser_reads_ground_truth_and_blurry_64px_pictures():
    rng = np.random.default_rng(0)
    objects = sharp = blurry = 0
    for seed in range(150):
        scene = random_scene(random.Random(seed), width=64, height=64)
        objects += len(scene.objects)
        sharp += _matches(scene, analyse(scene.render(), tolerant=True), 0.9)
        blurry += _matches(scene, analyse(_blurry(scene.render(), rng), tolerant=True), 0.5)
    assert sharp / objects >= 0.99
    assert blurry / objects >= 0.95


def test_analyser_reads_people_and_garments():
    people = garments = 0
    for seed in range(200):
        rng = random.Random(seed)
        person, garment = random_person(rng), random_garment(rng)
        reading = analyse_person(person.render())
        people += (reading.colour, reading.pattern) == (person.shirt.colour, person.shirt.pattern)
        reading = analyse_garment(garment.render(rng.randint(32, 128)))
        garments += (reading.colour, reading.pattern) == (garment.colour, garment.pattern)
    assert people >= 198 and garments >= 198


def test_analyser_ignores_page_bars_and_specks():
    example = make_example("poster", random.Random(0), colour="green", shape="square")
    found = analyse(example.answer_image)
    assert [(d.colour, d.shape) for d in found] == [("green", "square")]
    speckled = np.array(Scene(64, 64, "white", ()).render())
    speckled[10, 10] = COLOURS["red"]
    assert analyse(Image.fromarray(speckled)) == []


# --- tasks ----------------------------------------------------------------------------------------


def test_boxes_follow_reference_section_8():
    # centre (50, 25) of 100x50, size 20x10: 0.5 -> 112, 0.2 -> 44
    assert loc_bins((40, 20, 60, 30), 100, 50) == (112, 112, 44, 44)
    assert loc_bins((0, 0, 100, 50), 100, 50) == (112, 112, 223, 223)
    assert box_tokens((40, 20, 60, 30), 100, 50) == \
        "<box_start><loc-112><loc-112><loc-44><loc-44><box_end>"
    spaced = ("at <box_start> <loc-112> <loc-112> <loc-44> <loc-44> <box_end>"   # 4.30 spacing
              " and <box_start><loc-3><box_end>")                                  # malformed
    (box,) = parse_boxes(spaced, 100, 50)                 # official decode: bin / 224 * size
    assert box == pytest.approx((50 - 44 / 224 * 50, 25 - 44 / 224 * 25,
                                 50 + 44 / 224 * 50, 25 + 44 / 224 * 25))


def test_every_task_makes_well_formed_examples():
    for task, variant in TASKS.items():
        for seed in range(15):
            ex = make_example(task, random.Random(seed))
            assert isinstance(ex, Example) and ex.task == task and ex.variant == variant
            assert all(isinstance(im, Image.Image) for im in ex.images)
            assert ex.instruction and ex.answer_text and "<img" not in ex.answer_text
            if "boxes" in ex.meta:
                w, h = ex.meta["box_size"]
                target = ex.answer_image if ex.meta.get("box_target") == "answer" else ex.images[-1]
                assert target.size == (w, h)
                parsed = parse_boxes(ex.answer_text, w, h)
                assert len(parsed) == len(ex.meta["boxes"])
                for got, want in zip(parsed, ex.meta["boxes"]):
                    assert all(abs(a - b) <= 1 for a, b in
                               zip(loc_bins(got, w, h), loc_bins(want, w, h)))
            if "target_scene" in ex.meta:
                assert ex.answer_image.tobytes() == ex.meta["target_scene"].render().tobytes()
                assert ex.answer_image.size == ex.images[0].size
            if variant in ("seed_x_edit", "tryon"):
                assert ex.condition_image is ex.images[0] and ex.answer_image is not None
            draws = ("draw", "slide", "story", "poster", "improve", "tryon")
            if task in draws or variant == "seed_x_edit":
                assert ex.answer_image is not None
            else:
                assert ex.answer_image is None


def test_canonical_phrasings():
    scene = Scene(120, 60, "white", (Obj("square", "blue", 0, 0, 20).at(80, 10),
                                     Obj("circle", "orange", 0, 0, 20).at(10, 30)))
    assert caption(scene) == "An orange circle and a blue square."
    rng = random.Random(0)
    assert make_example("count", rng, scene=scene).answer_text == "There are 2 shapes."
    where = make_example("where", rng, scene=scene, index=0)
    assert where.instruction == "Where is the blue square?"
    assert where.answer_text == f"The blue square is at {box_tokens((80, 10, 100, 30), 120, 60)}."
    assert make_example("find_all", rng, scene=scene, shape="triangle").answer_text == \
        "There are no triangles."
    draw = make_example("draw", rng, colour="red", shape="circle", position="left")
    assert draw.instruction == "Generate an image: a red circle on the left."
    assert t2i_correct(draw.answer_image, "red", "circle", "left")
    assert make_example("draw", rng, colour="red", shape="circle", position=None).instruction == \
        "Draw a red circle."


def test_examples_are_deterministic_by_seed_and_mix_all_tasks():
    def fingerprint(ex: Example):
        pics = [im.tobytes() for im in ex.images + [ex.answer_image] if im is not None]
        return ex.task, ex.instruction, ex.answer_text, pics
    first = [fingerprint(e) for e, _ in zip(iter_examples(TRAIN_SEED_BASE), range(40))]
    again = [fingerprint(e) for e, _ in zip(iter_examples(TRAIN_SEED_BASE), range(40))]
    held_out = [fingerprint(e) for e, _ in zip(iter_examples(EVAL_SEED_BASE), range(40))]
    assert first == again and first != held_out
    assert {sample_task(random.Random(s)) for s in range(500)} == set(TASKS)
    only = [e.task for e, _ in zip(iter_examples(3, tasks=["count", "where"]), range(20))]
    assert set(only) <= {"count", "where"}


# --- metrics --------------------------------------------------------------------------------------


def test_text_metrics_are_perfect_on_truth_and_low_on_wrong_answers():
    for seed in range(50):
        ex = make_example("where", random.Random(seed))
        scene, (w, h) = ex.meta["scene"], ex.meta["box_size"]
        assert grounding_iou(parse_boxes(ex.answer_text, w, h), ex.meta["boxes"]) > 0.85
        assert caption_attr_accuracy(caption(scene), scene) == 1.0
        counted = make_example("count", random.Random(0), scene=scene).answer_text
        assert count_correct(counted, scene)
        other = next(c for c in COLOURS if c != scene.objects[0].colour)
        swapped = caption(world.recolor(scene, 0, other))
        assert caption_attr_accuracy(swapped, scene) < 1.0
    scene = Scene(100, 100, "white", (Obj("circle", "red", 0, 0, 20).at(10, 10),
                                      Obj("square", "blue", 0, 0, 20).at(60, 60)))
    assert caption_attr_accuracy("A blue circle and a red square.", scene) == 0.0
    assert caption_attr_accuracy("A red circle, a blue square and a green square.", scene) == 2 / 3
    assert parse_caption("Reds circles. A red circles and an orange triangle.") == \
        [("red", "circle"), ("orange", "triangle")]
    assert not count_correct("There are 3 shapes.", scene) and count_correct("two", scene)
    assert not count_correct("I cannot tell.", scene)
    assert grounding_iou([], [(0, 0, 10, 10)]) == 0.0
    assert grounding_iou([(0, 0, 10, 10), (50, 50, 60, 60)], [(0, 0, 10, 10)]) == 0.5
    assert grounding_iou([], []) == 1.0


def test_picture_metrics_are_perfect_on_truth_and_low_on_wrong_answers():
    for seed in range(20):
        rng = random.Random(seed)
        for task in ("edit_recolor", "edit_remove", "edit_move", "story", "improve"):
            ex = make_example(task, rng)
            source, edit = ex.meta["scene"], ex.meta["edit"]
            assert edit_correct(source, ex.answer_image, edit), (task, seed)
            scale = 64 / min(source.width, source.height)     # another size, shorter side 64
            size = (round(source.width * scale), round(source.height * scale))
            other = ex.answer_image.resize(size, Image.BILINEAR)
            assert edit_correct(source, other, edit), (task, seed)
            assert not edit_correct(source, ex.images[0], edit)       # nothing was edited
            assert psnr_outside(ex.images[0], ex.answer_image, ex.meta["changed_boxes"]) == PSNR_CAP
        draw = make_example("draw", rng)
        colour, shape, position = (draw.meta[k] for k in ("colour", "shape", "position"))
        assert t2i_correct(draw.answer_image, colour, shape, position)
        wrong = next(c for c in COLOURS if c != colour)
        assert not t2i_correct(draw.answer_image, wrong, shape, position)
        tryon = make_example("tryon", rng)
        garment = tryon.meta["garment"]
        assert tryon_correct(tryon.answer_image, garment, check_pattern=True)
        assert tryon_correct(tryon.answer_image.resize((64, 64), Image.BILINEAR), garment)
        assert not tryon_correct(tryon.condition_image, garment)
    # an edit that also moves a bystander is wrong
    scene = Scene(100, 100, "white", (Obj("circle", "red", 0, 0, 20).at(10, 10),
                                      Obj("square", "blue", 0, 0, 20).at(60, 60)))
    edit = Edit("recolor", 0, colour="green")
    bad = Scene(100, 100, "white", (Obj("circle", "green", 0, 0, 20).at(10, 10),
                                    Obj("square", "blue", 0, 0, 20).at(10, 60)))
    assert edit_correct(scene, edit.apply(scene).render(), edit)
    assert not edit_correct(scene, bad.render(), edit)
    as_dict = {"kind": "recolor", "index": 0, "colour": "purple"}
    assert not edit_correct(scene, bad.render(), as_dict)


def test_psnr_outside_is_taken_at_the_input_resolution():
    source = Scene(160, 80, "white", (Obj("circle", "red", 0, 0, 30).at(10, 10),)).render()
    noise = np.random.default_rng(0).normal(0, 8, (80, 160, 3))
    noisy = np.asarray(source, dtype=np.float32) + noise
    edited = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    value = psnr_outside(source, edited, (10, 10, 40, 40))
    assert 25 < value < 35                                   # sigma 8 noise: about 30 dB
    small = psnr_outside(source, edited.resize((64, 64), Image.BILINEAR), (10, 10, 40, 40))
    assert small < PSNR_CAP and np.isfinite(small)
    assert psnr_outside(source, source.resize((64, 64), Image.NEAREST), [(10, 10, 40, 40)]) > 15


def test_tryon_changes_only_the_shirt():
    person = random_person(random.Random(1))
    garment = Garment("green" if person.shirt.colour != "green" else "red", "striped")
    before, after = person.render(), dress(person, garment).render()
    x0, y0, x1, y1 = shirt_region(person)
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)
    ys, xs = np.nonzero(diff)
    assert ys.min() >= y0 and ys.max() < y1 and xs.min() >= x0 and xs.max() < x1
    assert psnr_outside(before, after, shirt_region(person)) == PSNR_CAP


@pytest.mark.parametrize("position", POSITIONS)
def test_drawn_positions_are_read_back(position):
    ex = make_example("draw", random.Random(0), colour="purple", shape="triangle",
                      position=position)
    assert [(d.colour, d.shape) for d in analyse(ex.answer_image)] == [("purple", "triangle")]
    assert t2i_correct(ex.answer_image, "purple", "triangle", position)
