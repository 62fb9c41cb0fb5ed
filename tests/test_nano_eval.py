"""``seedx eval nano``: held-out scenes through the product path, scored without the model.

* the analyser gives full marks to the ground truth of the evaluation scenes (>= 99 %);
* answers that *are* the ground truth, replayed through Runtime + Session.turn, score perfect
  text metrics (proves the plumbing: prompts, box placement, parsing, scoring);
* ``seedx eval nano --smoke --json`` on a (random-weight) Nano export prints one JSON object whose
  first keys are the metrics, numbers in range or null with a reason on stderr, then their
  standard errors, thresholds and whether each is met. The command runs through the core CLI's
  click group, to which the plugin's ``register_commands`` hook adds it;
* pictures are drawn with the scene's seed and the runtime's render defaults, which come from
  the manifest: change the manifest and the de-tokenizer receives the new values.

The export is the random-weight one of ``test_nano_preset`` (seconds to write), with an adapter
for every variant of ``tasks.TASKS``.
"""

from __future__ import annotations

import json
import random

import pytest

from seedx_nano import evaluate as ev
from seedx_nano import metrics, tasks
from test_nano_preset import random_nano_export

IN_UNIT = tuple(k for k in ev.METRIC_KEYS if k != "edit_psnr_outside")
VARIANTS = tuple(sorted(set(tasks.TASKS.values())))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return random_nano_export(tmp_path_factory.mktemp("nano") / "export", adapters=VARIANTS)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_scenes_are_held_out_and_deterministic():
    assert ev.EVAL_BASE >= tasks.EVAL_SEED_BASE
    seeds = {ev.suite_seed(s, k) for s in ev.SUITES for k in range(ev.DEFAULT_N)}
    assert len(seeds) == len(ev.SUITES) * ev.DEFAULT_N and min(seeds) >= tasks.EVAL_SEED_BASE
    a, b = ev.eval_example("edit", 4), ev.eval_example("edit", 4)
    assert a.instruction == b.instruction and a.images[0].tobytes() == b.images[0].tobytes()
    assert [ev.eval_example("edit", k).task for k in range(3)] == list(ev.EDIT_TASKS)
    assert [ev.eval_example("improve", k).meta["edit"].kind for k in range(3)] == list(
        tasks.IMPROVEMENT_KINDS)
    assert ev.eval_example("t2i", 0).instruction.startswith("Draw ")
    assert ev.eval_example("grounding", 0).instruction.startswith("Where is the ")
    for suite, start in (("slide", "Make a slide about "), ("poster", "Design a poster with "),
                         ("improve", "How could this image"), ("story", "Continue the story")):
        ex = ev.eval_example(suite, 0)
        assert ex.instruction.startswith(start) and ex.variant == ev.SUITES[suite].variant
    # the old seven keys first, in order (what --json consumers read), then the new suites'
    assert ev.METRIC_KEYS[:7] == ("grounding_miou", "caption_attr_acc", "count_acc",
                                  "t2i_attr_acc", "edit_acc", "edit_psnr_outside", "tryon_acc")
    assert set(ev.METRIC_KEYS[7:]) == {"slide_layout_miou", "slide_text_acc", "poster_acc",
                                       "improve_acc", "story_acc"}
    assert ev.THRESHOLDS["slide_layout_miou"] == 0.7 and ev.THRESHOLDS["edit_psnr_outside"] == 25
    assert all(ev.THRESHOLDS[k] == 0.8 for k in ("slide_text_acc", "poster_acc", "improve_acc",
                                                 "story_acc"))
    assert ev.DEFAULT_N == 200


def test_analyser_scores_the_ground_truth_of_the_eval_scenes():
    """>= 99 % on ground-truth renders of the same held-out scenes (40 per suite here; the
    command checks all of its scenes and reports ``analyser_gt_acc``)."""
    for suite in ev.SUITES:
        checks = [c for ex in ev.eval_examples(suite, 40) for c in ev.analyser_checks(suite, ex)]
        assert sum(checks) / len(checks) >= ev.GT_THRESHOLD, suite


def test_standard_errors():
    """std / sqrt(n) with divisor n: for 0/1 values, the binomial sqrt(p (1 - p) / n)."""
    mean, se, n = ev.mean_and_se([1.0] * 126 + [0.0] * 74 + [None])
    assert (mean, n) == (0.63, 200) and se == pytest.approx((0.63 * 0.37 / 200) ** 0.5, abs=1e-4)
    assert se == 0.0341
    assert ev.mean_and_se([20.0, 30.0]) == (25.0, 3.5355, 2)
    assert ev.mean_and_se([None]) == (None, None, 0)
    report = ev.EvalReport(scores={k: None for k in ev.METRIC_KEYS})
    report.scores.update(count_acc=0.63, edit_psnr_outside=26.0)
    report.standard_errors.update(count_acc=0.0341, edit_psnr_outside=0.5)
    assert report.meets["edit_psnr_outside"] is True and report.meets["count_acc"] is False
    assert report.meets["tryon_acc"] is None
    text = ev.format_report(report)
    assert "count_acc            0.6300 ± 0.0341" in text and "26.00 ± 0.50 dB" in text
    assert ">= 0.9" in text and ">= 25 dB" in text


def ground_truth_replies(suites=tuple(ev.SUITES), n=ev.SMOKE_N):
    from seedx_agent.testing import Reply

    replies = []
    for suite in suites:
        for k, ex in enumerate(ev.eval_examples(suite, n)):
            reply = Reply().text(ex.answer_text)
            replies.append((reply.image(seed=k) if ex.answer_image is not None else reply).eos())
            if suite in ev.OTHER_RENDERER_SUITES:  # asked again on the other rendering
                replies.append(Reply().text(ex.answer_text).eos())
    return replies


def test_ground_truth_answers_through_the_product_path_score_perfect(export):
    """Replay each scene's true answer as the model's reply: Runtime + Session.turn, box
    placement on the input image, reply parsing and scoring give perfect text metrics (the text
    halves of poster, improve and story included), and every picture turn yields a (random
    de-tokenizer) picture that gets scored, drawn with the scene's own seed."""
    from seedx_nano.preset import build_nano

    from seedx_agent.testing import replay_runtime

    rt = build_nano(root=export, load_plugins=False)
    replay_runtime(ground_truth_replies(), runtime=rt)
    seen = []
    report = ev.evaluate(export, smoke=True, runtime=rt, log=None,
                         on_answer=lambda suite, k, ex, answer: seen.append((suite, k, answer)))
    assert len(rt.replay) == 0
    s = report.scores
    assert list(s) == list(ev.METRIC_KEYS)
    assert s["grounding_miou"] >= 0.8  # 224-bin rounding of the true box
    assert s["caption_attr_acc"] == 1.0 and s["count_acc"] == 1.0
    # the second column: the same scenes drawn by the other renderer, the same true answers
    other = report.other_renderer
    assert set(other) == {"grounding_miou", "caption_attr_acc", "count_acc"}
    assert other["grounding_miou"][0] >= 0.8 and other["caption_attr_acc"][0] == 1.0
    assert other["count_acc"] == (1.0, 0.0, ev.SMOKE_N)
    assert s["slide_text_acc"] == 1.0 and s["slide_layout_miou"] >= 0.95
    for suite, parts in ev.TEXT_PARTS.items():
        assert set(report.details[suite]["text_parts"]) == set(parts)
        assert all(v == 1.0 for v in report.details[suite]["text_parts"].values()), suite
    for key in IN_UNIT:
        assert 0.0 <= s[key] <= 1.0
        assert report.standard_errors[key] is not None and report.counts[key] == ev.SMOKE_N
    assert 0.0 < s["edit_psnr_outside"] <= 100.0
    for suite in ("edit", "tryon", "slide", "poster", "improve", "story", "t2i"):
        assert report.details[suite]["pictures"] == ev.SMOKE_N, suite
        assert report.details[suite]["seeds"] == [ev.suite_seed(suite, 0),
                                                  ev.suite_seed(suite, ev.SMOKE_N - 1)]
    # a seed per scene: every picture was drawn with its scene's seed
    pictures = [(suite, k, a) for suite, k, a in seen if a.image is not None]
    assert len(pictures) >= 7 * ev.SMOKE_N
    for suite, k, answer in pictures:
        assert answer.seed == ev.suite_seed(suite, k) == answer.rendered_with["seed"]
    assert report.analyser_gt_acc >= ev.GT_THRESHOLD and not report.reasons


def test_pictures_draw_with_the_manifest_render_defaults(export, tmp_path):
    """One source: the eval passes no steps or guidance, so what the de-tokenizer receives is the
    manifest's ``render_defaults`` (through the preset's runtime defaults); change the manifest
    and the de-tokenizer receives the new values."""
    import shutil

    from seedx_nano.preset import build_nano

    from seedx_agent.testing import replay_runtime

    folder = tmp_path / "nano"
    shutil.copytree(export, folder)
    path = folder / "nano_manifest.json"
    received = []
    for steps, guidance, image_guidance in ((1, 2.0, 1.25), (2, 4.5, 1.75)):
        manifest = json.loads(path.read_text())
        manifest["render_defaults"] = dict(seed=5, num_inference_steps=steps,
                                           guidance_scale=guidance,
                                           image_guidance_scale=image_guidance)
        path.write_text(json.dumps(manifest))
        rt = build_nano(root=folder, load_plugins=False)
        replay_runtime(ground_truth_replies(("t2i", "edit"), 1), runtime=rt)
        calls = []
        real = rt.render

        def spy(features, *, stage, options, real=real, rt=rt, calls=calls, **kw):
            calls.append((stage, options.resolved(rt.render_defaults)))
            return real(features, stage=stage, options=options, **kw)

        rt.render = spy
        report = ev.evaluate(folder, n=1, runtime=rt, suites=("t2i", "edit"), log=None)
        assert [stage for stage, _ in calls] == [1, 2]
        for (stage, opts), suite in zip(calls, ("t2i", "edit")):
            assert (opts.num_inference_steps, opts.guidance_scale) == (steps, guidance)
            assert opts.seed == ev.suite_seed(suite, 0)  # the scene's, not the manifest's 5
        assert calls[1][1].image_guidance_scale == image_guidance
        assert report.render_defaults == dict(num_inference_steps=steps, guidance_scale=guidance,
                                              image_guidance_scale=image_guidance)
        # and the pictures' provenance says so (stage 1 has no image guidance)
        assert report.details["edit"]["rendered_with"] == [report.render_defaults]
        assert report.details["t2i"]["rendered_with"] == [dict(report.render_defaults,
                                                               image_guidance_scale=None)]
        received.append(calls[0][1].num_inference_steps)
    assert received == [1, 2]


def seedx_eval(*args: str):
    """``seedx eval ARGS`` through the core CLI, to which the plugin's hook added ``nano``."""
    from click.testing import CliRunner

    from seedx_agent.cli import cli

    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def test_eval_command_smoke_json(export):
    """What CI runs: the real (here random) LLM answers; one JSON object, the metrics first."""
    result = seedx_eval("nano", "--smoke", "--json", "--model", str(export))
    assert result.exit_code == 0, result.output
    out, err = result.stdout, result.stderr
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert list(scores)[:len(ev.METRIC_KEYS)] == list(ev.METRIC_KEYS)
    for key in IN_UNIT:
        assert scores[key] is not None and 0.0 <= scores[key] <= 1.0, key
        assert scores["standard_errors"][key] is not None and scores["n"][key] == ev.SMOKE_N
    psnr = scores["edit_psnr_outside"]
    assert psnr is None and "edit_psnr_outside is null" in err or 0 < psnr <= 100
    assert scores["thresholds"] == ev.THRESHOLDS
    assert set(scores["meets"]) == set(ev.METRIC_KEYS)
    assert scores["render_defaults"] == dict(num_inference_steps=2, guidance_scale=3.0,
                                             image_guidance_scale=1.5)  # the fixture's plan
    assert scores["analyser_gt_acc"] >= ev.GT_THRESHOLD
    for spec in ev.SUITES.values():
        assert f"[eval] {', '.join(spec.keys)}: 3 held-out scenes" in err  # a line per suite
    assert "analyser_gt_acc" in err


def test_eval_command_refuses_a_bad_n_and_a_missing_folder(tmp_path):
    result = seedx_eval("nano", "--n", "0")
    assert result.exit_code == 2 and "--n" in result.output
    result = seedx_eval("nano", "--smoke", "--model", str(tmp_path / "none"))
    assert result.exit_code != 0 and str(tmp_path / "none") in result.output


def test_missing_components_are_null_with_a_reason(export, tmp_path):
    """A Nano whose de-tokenizer stage 2 and adapters are not trained yet: edit, try-on and the
    designer's suites are null, and say why."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(export, partial, ignore=shutil.ignore_patterns("adapters"))
    manifest = json.loads((partial / "nano_manifest.json").read_text())
    manifest.update(finished_stages=["vit", "vae", "llm", "detok1"], adapters=[])
    (partial / "nano_manifest.json").write_text(json.dumps(manifest))
    report = ev.evaluate(partial, smoke=True, suites=("edit", "tryon", "slide", "story"),
                         log=None)
    assert report.scores["edit_acc"] is None and report.scores["edit_psnr_outside"] is None
    assert report.scores["tryon_acc"] is None
    assert "detok2" in report.reasons["edit_acc"] and "detok2" in report.reasons["tryon_acc"]
    assert "lora" in report.reasons["slide_text_acc"] and "lora" in report.reasons["story_acc"]
    assert report.meets["edit_acc"] is None and report.standard_errors["edit_acc"] is None
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


def test_slide_scoring():
    """The layout is read by region name from the "Layout:" line; the text must be exact."""
    ex = ev.eval_example("slide", 0)
    colour, shape, (w, h) = ex.meta["colour"], ex.meta["shape"], ex.meta["box_size"]
    truth = ev.score("slide", ex, ev.ground_truth_answer("slide", ex))
    assert truth["slide_text_acc"] == 1.0 and truth["slide_layout_miou"] > 0.95
    # the regions in another order still count; a missing one counts 0; the bullets as one line
    title, _, picture = (tasks.box_tokens(b, w, h) for b in ex.meta["boxes"])
    bullets = " ".join(f"- {b}" for b in tasks.slide_bullets(colour, shape))
    reply = (f"Title: {colour.capitalize()} {shape}s {bullets} "
             f"Layout: picture {picture}, title {title}.")
    got = ev.score("slide", ex, ev.Answer(text=reply, markup=reply))
    assert got["slide_text_acc"] == 1.0
    assert 0.6 < got["slide_layout_miou"] < 0.67  # two of three regions
    assert metrics.parse_layout(reply, w, h).keys() == {"title", "picture"}
    wrong = reply.replace(f"{colour.capitalize()} {shape}s", "Shapes")
    assert ev.score("slide", ex, ev.Answer(text=wrong, markup=wrong))["slide_text_acc"] == 0.0
    assert metrics.parse_slide_text("no slide") == (None, [])


def test_poster_improve_and_story_scoring():
    """Text and picture must both be right."""
    poster = ev.eval_example("poster", 0)
    colour, shape = poster.meta["colour"], poster.meta["shape"]
    assert ev.score("poster", poster, ev.ground_truth_answer("poster", poster))["poster_acc"] == 1.0
    other = next(c for c in ("red", "blue") if c != colour)
    for text, image in ((f"A large {other} {shape}.", poster.answer_image),
                        (f"A large {colour} {shape} and a {other} {shape}.", poster.answer_image),
                        (poster.answer_text, None)):
        assert ev.score("poster", poster, ev.Answer(text=text, image=image))["poster_acc"] == 0.0

    for k in range(3):  # recolour, remove, move
        improve = ev.eval_example("improve", k)
        scene, rule = improve.meta["scene"], improve.meta["edit"]
        assert metrics.parse_edit(improve.answer_text, scene, prefer=rule.index) == rule
        truth = ev.ground_truth_answer("improve", improve)
        assert ev.score("improve", improve, truth)["improve_acc"] == 1.0
        # the picture must apply the suggestion: the unchanged scene does not
        unchanged = ev.Answer(text=improve.answer_text, image=improve.images[0])
        assert ev.score("improve", improve, unchanged)["improve_acc"] == 0.0
        assert ev.score("improve", improve, ev.Answer(text="Nothing.", image=truth.image)
                        )["improve_acc"] == 0.0
    scene = ev.eval_example("improve", 0).meta["scene"]
    obj = scene.objects[0]
    assert metrics.parse_edit(f"Make the {obj.colour} {obj.shape} {obj.colour}.", scene) is None
    assert metrics.parse_edit("Remove the purple hexagon.", scene) is None
    other_colour = next(c for c in ("red", "blue") if c != obj.colour)
    edit = metrics.parse_edit(f"Make the {obj.colour} {obj.shape} {other_colour}.", scene)
    assert edit is not None and edit.kind == "recolor" and edit.colour == other_colour

    story = ev.eval_example("story", 0)
    scene, rule = story.meta["scene"], story.meta["edit"]
    truth = ev.ground_truth_answer("story", story)
    assert ev.score("story", story, truth)["story_acc"] == 1.0
    assert ev.score("story", story, ev.Answer(text=story.answer_text, image=story.images[0])
                    )["story_acc"] == 0.0
    target = scene.objects[rule.index]
    here = tasks.position_of(target, scene)
    assert metrics.story_move(f"Then the {target.colour} {target.shape} moves to the {here}.",
                              scene, rule) is None
    others = [o for i, o in enumerate(scene.objects) if i != rule.index
              and (o.colour, o.shape) != (target.colour, target.shape)]
    if others:
        assert metrics.story_move(f"Then the {others[0].colour} {others[0].shape} moves to the "
                                  f"{rule.position}.", scene, rule) is None
