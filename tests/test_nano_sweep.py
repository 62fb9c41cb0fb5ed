"""``seedx eval nano --sweep``: steps and guidance chosen on held-out scenes, written to the manifest.

The sweep's scenes are its own (disjoint from every evaluation suite and from training); every
grid point reaches the de-tokenizer; the winner lands in ``nano_manifest.json`` (its ``seed``
kept, the sweep recorded), and a runtime built from the folder afterwards draws with it, which
is what ``seedx eval nano`` then evaluates with. On the random-weight export of
``test_nano_preset`` with a tiny grid.
"""

from __future__ import annotations

import json
import shutil

import pytest

from seedx_nano import evaluate as ev
from seedx_nano import sweep as sw
from seedx_nano import tasks
from test_nano_eval import seedx_eval
from test_nano_preset import random_nano_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return random_nano_export(tmp_path_factory.mktemp("nano") / "export")


@pytest.fixture
def folder(export, tmp_path):
    """A copy of the export whose manifest already has render defaults (as an export writes)."""
    copy = tmp_path / "nano"
    shutil.copytree(export, copy)
    path = copy / "nano_manifest.json"
    manifest = json.loads(path.read_text())
    manifest["render_defaults"] = dict(seed=11, num_inference_steps=2, guidance_scale=3.0)
    path.write_text(json.dumps(manifest))
    return copy


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sweep_scenes_are_held_out_and_disjoint_from_the_eval():
    eval_seeds = {ev.suite_seed(s, k) for s in ev.SUITES for k in range(ev.DEFAULT_N)}
    sweep_seeds = {sw.sweep_seed(p, k) for p in sw.PARTS for k in range(10 * sw.SWEEP_N)}
    assert len(sweep_seeds) == len(sw.PARTS) * 10 * sw.SWEEP_N
    assert not eval_seeds & sweep_seeds
    assert min(sweep_seeds) >= tasks.EVAL_SEED_BASE  # never trained on
    # above the eval's suites, below training's held-out pairs (EVAL_SEED_BASE + 5e8)
    assert max(eval_seeds) < min(sweep_seeds) < max(sweep_seeds) < tasks.EVAL_SEED_BASE + 5 * 10**8
    assert sw.sweep_example("t2i", 0).instruction.startswith("Draw ")
    assert sw.sweep_example("edit", 0).task == "edit_recolor"


def test_ties_go_to_fewer_steps_then_lower_guidance():
    points = [dict(num_inference_steps=s, guidance_scale=g, t2i_attr_acc=v)
              for s, g, v in ((30, 1.5, 0.5), (10, 7.5, 0.5), (10, 3.0, 0.5), (20, 1.5, 0.25))]
    assert sw.choose(points, "t2i_attr_acc") == points[2]
    points.append(dict(num_inference_steps=30, guidance_scale=5.0, t2i_attr_acc=0.75))
    assert sw.choose(points, "t2i_attr_acc") == points[-1]


def test_sweep_scores_every_point_and_writes_the_winner(folder):
    """Every grid point reaches the de-tokenizer; the winner goes into the manifest, which the
    runtime built from the folder afterwards (what the eval uses) draws with."""
    from seedx_nano.preset import build_nano

    from seedx_agent.testing import Reply, replay_runtime

    rt = build_nano(root=folder, load_plugins=False)
    n, steps, guidances, image_guidances = 1, (2, 1), (2.0, 1.0), (1.25, 1.0)
    turns = n * (len(steps) * len(guidances) + len(image_guidances))
    replay_runtime([Reply().text("Here it is.").image(seed=0).eos() for _ in range(turns)],
                   runtime=rt)
    drawn = []
    real = rt.render

    def spy(features, *, stage, options, **kw):
        o = options.resolved(rt.render_defaults)
        drawn.append((stage, o.num_inference_steps, o.guidance_scale, o.image_guidance_scale,
                      o.seed))
        return real(features, stage=stage, options=options, **kw)

    rt.render = spy
    result = sw.sweep(folder, n=n, steps=steps, guidances=guidances,
                      image_guidances=image_guidances, runtime=rt, log=None)
    assert len(rt.replay) == 0
    assert [d[:3] for d in drawn[:4]] == [(1, s, g) for s in steps for g in guidances]
    assert all(d[4] == sw.sweep_seed("t2i", 0) for d in drawn[:4])  # the scene's seed
    # random pictures score 0 everywhere: the tie goes to the fewest steps, lowest guidance
    assert result.chosen == dict(num_inference_steps=1, guidance_scale=1.0,
                                 image_guidance_scale=1.0)
    assert [d[:4] for d in drawn[4:]] == [(2, 1, 1.0, ig) for ig in image_guidances]

    manifest = json.loads((folder / "nano_manifest.json").read_text())
    assert manifest["render_defaults"] == dict(seed=11, num_inference_steps=1, guidance_scale=1.0,
                                               image_guidance_scale=1.0)
    record = manifest["render_defaults_sweep"]
    assert record["chosen"] == result.chosen and record["n"] == n
    assert record["grid"] == dict(num_inference_steps=[2, 1], guidance_scale=[2.0, 1.0],
                                  image_guidance_scale=[1.25, 1.0])
    assert len(record["scores"]) == 4 and len(record["image_scores"]) == 2
    assert all(p["t2i_attr_acc"] == 0.0 and p["standard_error"] == 0.0 for p in record["scores"])
    assert record["seeds"]["t2i"] == [sw.sweep_seed("t2i", 0)] * 2
    assert manifest["finished_stages"]  # the rest of the manifest is kept

    after = build_nano(root=folder, load_plugins=False)
    assert after.render_defaults.model_dump() == dict(seed=11, num_inference_steps=1,
                                                      guidance_scale=1.0, image_guidance_scale=1.0)
    text = sw.format_sweep(result)
    assert "0.0000 ± 0.0000" in text and "chosen: num_inference_steps 1" in text


def test_sweep_command(folder):
    """``--no-write`` prints the table and leaves the manifest; without it the manifest gets the
    winner (here on the random LLM: no pictures, every point 0, the cheapest wins)."""
    before = (folder / "nano_manifest.json").read_text()
    args = ("nano", "--sweep", "--model", str(folder), "--n", "1", "--steps", "3,1",
            "--guidances", "2", "--image-guidances", "")
    result = seedx_eval(*args, "--no-write")
    assert result.exit_code == 0, result.output
    assert "steps \\ guidance" in result.stdout and "chosen: num_inference_steps 1" in result.stdout
    assert "--no-write" in result.stderr
    assert (folder / "nano_manifest.json").read_text() == before
    result = seedx_eval(*args, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["chosen"] == dict(num_inference_steps=1, guidance_scale=2.0)
    manifest = json.loads((folder / "nano_manifest.json").read_text())
    assert manifest["render_defaults"] == dict(seed=11, num_inference_steps=1, guidance_scale=2.0)
    assert manifest["render_defaults_sweep"]["image_scores"] == []


def test_sweep_refuses_to_write_without_a_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="--no-write"):
        sw.sweep(tmp_path, n=1, steps=(1,), guidances=(1.0,), log=None)
    result = seedx_eval("nano", "--sweep", "--steps", "x")
    assert result.exit_code == 2 and "--steps" in result.output
