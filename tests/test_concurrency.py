"""Eight sessions on one SEED-X Nano runtime from eight threads: no cross-talk (issue 10, 4a).

A runtime is shared: one tokenizer, one ViT with a feature cache keyed by image content, one base
LLM whose LoRA adapters are runtime-wide state switched under ``lock("llm")``, and lazily built
de-tokenizer stages. Sessions own only their history and KV caches. If any of that leaked from one
session into another (a KV cache decoded under the wrong adapter, a cached ViT feature of another
picture, a de-tokenizer seeded by someone else's turn), a session's answers would depend on what
ran beside it. So each session runs alone first, and then all eight run at once, released together
by a barrier, each turn's answers compared with its lone run.

Decoding is greedy and every picture has a fixed seed, so equal means equal: the same words, the
same boxes, and the same content ids for the pictures drawn.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import pytest

from seedx_nano.manifest import is_finished

# under CI an unfinished Nano is a failure, not a reason to skip
pytestmark = pytest.mark.skipif(not is_finished() and os.environ.get("CI", "").lower() != "true",
                                reason="the shipped SEED-X Nano has not finished training yet "
                                       "(plugins/seedx_nano/weights/nano_manifest.json)")

NANO_PICTURES = Path(__file__).resolve().parents[1] / "examples" / "nano"
SCENE = NANO_PICTURES / "scene.png"
PERSON, GARMENT = NANO_PICTURES / "person.png", NANO_PICTURES / "garment.png"
DRAW = dict(num_inference_steps=2, max_new_tokens=80)  # a picture run is 64 slots + a few words


def world_scene(seed: int):
    """A scene from the Nano's world generator, one the shipped examples do not contain."""
    from seedx_nano.world import random_scene

    return random_scene(random.Random(seed), n_objects=2, max_side=128).render()


# Each plan is one session: (name, variant it opens on, its turns as ``ask`` arguments). In this
# order, neighbours run on different variants, so the queue on the LLM lock switches adapters
# between almost every two turns. Five variants are spanned: seed_x_i, seed_x_edit, designer,
# tryon, slide.
def session_plans():
    return [
        ("describe, then count", "seed_x_i", [
            dict(text="Describe the image.", images=[SCENE], max_new_tokens=24),
            dict(text="How many shapes are there?", max_new_tokens=16)]),
        ("edit a scene", "seed_x_i", [
            dict(text="Make the square green.", images=[SCENE], edit=True, seed=11, **DRAW)]),
        ("design a poster", "seed_x_i", [
            dict(text="Design a poster with a red circle.", skill="designer", seed=5, **DRAW)]),
        ("try a garment on", "seed_x_i", [
            dict(text="Put this garment on the person.", images=[PERSON, GARMENT],
                 variant="tryon", skill="tryon", seed=3, **DRAW)]),
        ("ground a world scene", "seed_x_i", [
            dict(text="Where is the blue square?", images=[world_scene(1)], skill="grounding",
                 max_new_tokens=24)]),
        ("draw, then edit the drawing", "seed_x_i", [
            dict(text="Draw a red circle.", seed=7, **DRAW),
            dict(text="Make the circle blue.", edit=True, seed=8, **DRAW)]),
        ("make a slide", "seed_x_i", [
            dict(text="Make a slide about blue squares.", skill="slides", seed=9, **DRAW)]),
        ("describe a world scene, then edit it", "seed_x_edit", [
            dict(text="Describe the image.", images=[world_scene(2)], variant="seed_x_i",
                 max_new_tokens=24),
            dict(text="Make the circle yellow.", seed=13, **DRAW)]),
    ]


def answer_of(done, session) -> dict:
    """What a turn answered, in values that compare across runs: words, boxes (bins and pixels,
    and the picture they are on), content ids of the pictures in and out, the actions."""
    from seedx_agent.types import BoxPart, ImagePart, TextPart

    parts = []
    for part in done.parts:
        if isinstance(part, TextPart):
            parts.append(("text", part.text))
        elif isinstance(part, BoxPart):
            parts.append(("box", tuple(part.bins), part.pixel_xyxy, part.target_image))
        elif isinstance(part, ImagePart):
            parts.append(("image", part.role, part.image_id))
        else:
            parts.append((type(part).__name__, part.model_dump_json()))
    return {"parts": parts, "finish": done.finish_reason,
            "errors": [e.message for e in done.errors],
            "actions": [(a.skill, a.action, a.payload) for a in done.actions],
            "artifacts": sorted(Path(a).name for a in done.artifacts),
            "variant": session.history[done.turn_index].variant}


def run_plan(runtime, plan, *, before_turn=lambda: None, on_event=None) -> list[dict]:
    name, variant, turns = plan
    session = runtime.open_session(variant=variant)
    answers = []
    for turn in turns:
        before_turn()
        done = session.ask(**turn, on_event=on_event)
        answers.append(answer_of(done, session))
    return answers


@pytest.fixture(scope="module")
def alone(nano):
    """Each session's answers when it runs by itself, one after the other."""
    return [run_plan(nano, plan) for plan in session_plans()]


def test_the_sessions_span_at_least_three_variants_with_images_and_edits(nano, alone):
    """The comparison below is only worth something if the sessions really do different things:
    several adapters on the one base, input pictures, edits, drawings, boxes and skills."""
    registered = set(nano.variants.names())
    used = {answer["variant"] for answers in alone for answer in answers}
    assert used <= registered
    assert {"seed_x_i", "seed_x_edit"} <= used and len(used) >= 3, used
    assert used - {"seed_x_i", "seed_x_edit"} <= set(nano.adapters.loaded)
    turns = [answer for answers in alone for answer in answers]
    assert all(answer["errors"] == [] for answer in turns), [a["errors"] for a in turns]
    kinds = {part[0] for answer in turns for part in answer["parts"]}
    roles = {part[1] for answer in turns for part in answer["parts"] if part[0] == "image"}
    assert {"text", "box", "image"} <= kinds and {"input", "generated", "edited"} <= roles


def test_eight_threads_give_each_session_its_lone_answers(nano, alone):
    plans = session_plans()
    nano.clear_vit_cache()  # the threads encode every picture again, side by side
    start = threading.Barrier(len(plans), timeout=60)
    next_turn = threading.Barrier(len(plans), timeout=60)
    most_turns = max(len(turns) for _, _, turns in plans)
    together: list[list[dict] | BaseException | None] = [None] * len(plans)
    in_turn, overlap = [0], [0]
    count = threading.Lock()

    def track(event):
        from seedx_agent.types import TurnDone

        with count:
            in_turn[0] += -1 if isinstance(event, TurnDone) else 0
            overlap[0] = max(overlap[0], in_turn[0])

    def worker(i: int) -> None:
        turns_done = [0]

        def before_turn():
            (start if turns_done[0] == 0 else next_turn).wait()
            turns_done[0] += 1
            with count:
                in_turn[0] += 1
                overlap[0] = max(overlap[0], in_turn[0])

        try:
            together[i] = run_plan(nano, plans[i], before_turn=before_turn, on_event=track)
            for _ in range(turns_done[0], most_turns):  # a short session still meets the others
                next_turn.wait()
        except BaseException as exc:  # noqa: BLE001 - reported on the test's thread
            together[i] = exc
            start.abort()
            next_turn.abort()

    threads = [threading.Thread(target=worker, args=(i,), name=f"session-{i}")
               for i in range(len(plans))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a session thread hung"
    errors = [r for r in together if isinstance(r, BaseException)]
    assert not errors, errors
    assert overlap[0] >= 4, f"only {overlap[0]} turns ever ran at once: the threads did not overlap"
    for (name, _, _), lone, shared in zip(plans, alone, together):
        assert shared == lone, f"session {name!r} answered differently beside the others"
