"""``seedx eval nano``: held-out scenes through the product path, scored without the model.

* the analyser gives full marks to the ground truth of the evaluation scenes (>= 99 %);
* answers that *are* the ground truth, replayed through Runtime + Session.turn, score perfect
  text metrics (proves the plumbing: prompts, box placement, parsing, scoring);
* ``seedx eval nano --smoke --json`` on a (random-weight) Nano export prints one JSON object with
  exactly the seven keys, numbers in range or null with a reason on stderr. The command runs
  through the core CLI's click group, to which the plugin's ``register_commands`` hook adds it.

The export is the random-weight one of ``test_nano_preset`` (seconds to write).
"""

from __future__ import annotations

import json
import random

import pytest
import torch

from seedx_nano import evaluate as ev
from seedx_nano import tasks
from test_nano_preset import random_nano_export

IN_UNIT = ("grounding_miou", "caption_attr_acc", "count_acc", "t2i_attr_acc", "edit_acc",
           "tryon_acc")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return random_nano_export(tmp_path_factory.mktemp("nano") / "export")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_eval_scenes_are_held_out_and_deterministic():
    assert ev.EVAL_BASE >= tasks.EVAL_SEED_BASE
    seeds = {ev.suite_seed(s, k) for s in ev.SUITES for k in range(ev.DEFAULT_N)}
    assert len(seeds) == len(ev.SUITES) * ev.DEFAULT_N and min(seeds) >= tasks.EVAL_SEED_BASE
    a, b = ev.eval_example("edit", 4), ev.eval_example("edit", 4)
    assert a.instruction == b.instruction and a.images[0].tobytes() == b.images[0].tobytes()
    assert [ev.eval_example("edit", k).task for k in range(3)] == list(ev.EDIT_TASKS)
    assert ev.eval_example("t2i", 0).instruction.startswith("Draw ")
    assert ev.eval_example("grounding", 0).instruction.startswith("Where is the ")


def test_analyser_scores_the_ground_truth_of_the_eval_scenes():
    """>= 99 % on ground-truth renders of the same held-out scenes (40 per suite here; the
    command checks all of its scenes and reports ``analyser_gt_acc``)."""
    for suite in ev.SUITES:
        checks = [c for ex in ev.eval_examples(suite, 40) for c in ev.analyser_checks(suite, ex)]
        assert sum(checks) / len(checks) >= ev.GT_THRESHOLD, suite


def test_ground_truth_answers_through_the_product_path_score_perfect(export):
    """Replay each scene's true answer as the model's reply: Runtime + Session.turn, box
    placement on the input image, reply parsing and scoring give perfect text metrics, and
    every picture turn yields a (random de-tokenizer) picture that gets scored."""
    from seedx_agent.testing import Reply, replay_runtime
    from seedx_nano.preset import build_nano

    rt = build_nano(root=export, load_plugins=False)
    replies = []
    for suite in ev.SUITES:
        for k, ex in enumerate(ev.eval_examples(suite, ev.SMOKE_N)):
            reply = Reply().text(ex.answer_text)
            replies.append((reply.image(seed=k) if ex.answer_image is not None else reply).eos())
    replay_runtime(replies, runtime=rt)
    report = ev.evaluate(export, smoke=True, runtime=rt, log=None)
    assert len(rt.replay) == 0
    s = report.scores
    assert list(s) == list(ev.METRIC_KEYS)
    assert s["grounding_miou"] >= 0.8  # 224-bin rounding of the true box
    assert s["caption_attr_acc"] == 1.0 and s["count_acc"] == 1.0
    for key in IN_UNIT:
        assert 0.0 <= s[key] <= 1.0
    assert 0.0 < s["edit_psnr_outside"] <= 100.0
    assert report.details["edit"]["pictures"] == ev.SMOKE_N
    assert report.details["tryon"]["pictures"] == ev.SMOKE_N
    assert report.analyser_gt_acc >= ev.GT_THRESHOLD and not report.reasons


def seedx_eval(*args: str):
    """``seedx eval ARGS`` through the core CLI, to which the plugin's hook added ``nano``."""
    from click.testing import CliRunner

    from seedx_agent.cli import cli

    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def test_eval_command_smoke_json(export):
    """What CI runs: the real (here random) LLM answers; one JSON object, seven keys."""
    result = seedx_eval("nano", "--smoke", "--json", "--model", str(export))
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert list(scores) == list(ev.METRIC_KEYS)
    for key in IN_UNIT:
        assert scores[key] is not None and 0.0 <= scores[key] <= 1.0, key
    psnr = scores["edit_psnr_outside"]
    assert psnr is None and "edit_psnr_outside is null" in err or 0 < psnr <= 100
    for key in ev.METRIC_KEYS:
        assert f"[eval] {key}" in err  # a progress line per metric
    assert "analyser_gt_acc" in err


def test_eval_command_refuses_a_bad_n_and_a_missing_folder(tmp_path):
    result = seedx_eval("nano", "--n", "0")
    assert result.exit_code == 2 and "--n" in result.output
    result = seedx_eval("nano", "--smoke", "--model", str(tmp_path / "none"))
    assert result.exit_code != 0 and str(tmp_path / "none") in result.output


def test_missing_components_are_null_with_a_reason(export, tmp_path):
    """A Nano whose de-tokenizer stage 2 and adapters are not trained yet: edit and try-on are
    null, and say why."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(export, partial, ignore=shutil.ignore_patterns("adapters"))
    manifest = json.loads((partial / "nano_manifest.json").read_text())
    manifest.update(finished_stages=["vit", "vae", "llm", "detok1"], adapters=[])
    (partial / "nano_manifest.json").write_text(json.dumps(manifest))
    report = ev.evaluate(partial, smoke=True, suites=("edit", "tryon"), log=None)
    assert report.scores["edit_acc"] is None and report.scores["edit_psnr_outside"] is None
    assert report.scores["tryon_acc"] is None
    assert "detok2" in report.reasons["edit_acc"] and "detok2" in report.reasons["tryon_acc"]
    text = ev.format_report(report)
    assert "edit_acc             null" in text and "analyser_gt_acc" in text


def test_scoring_rules():
    """A missing box is IoU 0; an edit without a picture is wrong and has no PSNR."""
    ex = ev.eval_example("grounding", 0)
    assert ev.score("grounding", ex, ev.Answer(text="It is somewhere."))["grounding_miou"] == 0.0
    edit = ev.eval_example("edit", 0)
    assert ev.score("edit", edit, ev.Answer()) == {"edit_acc": 0.0, "edit_psnr_outside": None}
    truth = ev.ground_truth_answer("edit", edit)
    scored = ev.score("edit", edit, truth)
    assert scored["edit_acc"] == 1.0 and scored["edit_psnr_outside"] == 100.0
    rng = random.Random(3)
    draw = tasks.make_example("draw", rng, position=None)
    assert ev.score("t2i", draw, ev.Answer(image=draw.answer_image))["t2i_attr_acc"] == 1.0
