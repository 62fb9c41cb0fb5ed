"""The second renderer of the Nano's world (``seedx_nano.other_renderer``): the same scenes drawn
another way, never used in training, that the model-free analyser still reads exactly."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from seedx_nano import evaluate as ev
from seedx_nano.other_renderer import render_other

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "seedx_nano"


def test_the_analyser_reads_the_other_rendering_of_held_out_scenes():
    from seedx_nano.suites import reads_scene

    checks = []
    for suite in ("grounding", "caption", "count"):
        for k in range(30):
            scene = ev.eval_example(suite, k).meta["scene"]
            checks += reads_scene(scene, render_other(scene, ev.suite_seed(suite, k)))
    assert sum(checks) / len(checks) >= ev.GT_THRESHOLD


def test_it_draws_differently_and_deterministically():
    scene = ev.eval_example("caption", 5).meta["scene"]
    a, b = render_other(scene, 1), render_other(scene, 1)
    assert a.tobytes() == b.tobytes() and a.size == (scene.width, scene.height)
    ours, theirs = np.asarray(scene.render(), dtype=int), np.asarray(a, dtype=int)
    assert (ours != theirs).any(axis=-1).mean() > 0.5  # background shifted, edges smoothed
    assert render_other(scene, 2).tobytes() != a.tobytes()


def test_training_never_sees_it():
    for path in (PLUGIN / "train").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                 for a in node.names} | {node.module or "" for node in ast.walk(tree)
                                         if isinstance(node, ast.ImportFrom)}
        assert not any("other_renderer" in n for n in names), path
