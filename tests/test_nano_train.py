"""The SEED-X Nano training pipeline (``python -m seedx_nano.train``).

* A run directory made by the pipeline before the move (``core_models.nano.train`` at be3f654,
  ``fixtures/nano_run_be3f654``: data done, ``vit`` interrupted after step 1 of 2) resumes
  through the new entry point: ``vit`` continues from its checkpoint, then every later stage and
  the export run. That resumed run is also this module's smoke run: the real Nano sizes on a few
  dozen scenes, one or two steps per stage, so CI proves that data, ViT, VAE, feature caching,
  LLM pre-training, both de-tokenizer stages, the LoRA adapters and the export still run.
* Every file a run holds loads with ``torch.load(weights_only=True)``; old checkpoints need
  exactly the NumPy RNG globals allowlisted, anything else is refused with a clear error.
* The data stage run from scratch renders exactly what the old code rendered.
* A resumed stage equals a straight run of the same steps, bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seedx_nano.config import nano_config
from seedx_nano.train.__main__ import main
from seedx_nano.train.checkpoint import CheckpointError, OLD_NUMPY_RNG_GLOBALS, load_checkpoint
from seedx_nano.train.export import SIZE_LIMIT_BYTES
from seedx_nano.train.plan import STAGES, TRAINED

OLD_RUN = Path(__file__).parent / "fixtures" / "nano_run_be3f654"


def train(*argv: str) -> tuple[int, str]:
    """``python -m seedx_nano.train ARGV`` in-process, one thread; (exit status, log)."""
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        status = main([*argv, "--threads", "1"])
    return status, log.getvalue()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nano") / "run"
    shutil.copytree(OLD_RUN, out)
    status, log = train("--out", str(out), "--smoke")
    assert status == 0, log
    return out, log


def test_nano_config_is_a_seedx_config():
    cfg = nano_config()
    assert cfg.base_resolution == 64 and cfg.num_img_tokens == 16
    assert len(cfg.resolution_grids) == 8
    assert cfg.vit["image_size"] == 64 and cfg.vit["n_queries"] == 64  # vit_down: 64 -> 16
    assert cfg.unet["cross_attention_dim"] == 128


# --- a run made before the move -------------------------------------------------------------------

def test_the_old_run_resumes_its_interrupted_stage_from_the_checkpoint(smoke_run):
    out, log = smoke_run
    old = load_checkpoint(OLD_RUN / "stages" / "vit" / "ckpt.pt")
    assert old["step"] == 1 and not (OLD_RUN / "stages" / "vit" / "done.json").exists()
    assert "[data] already done, skipped" in log
    assert "[vit] resumed at step 1/2" in log
    done = json.loads((out / "stages" / "vit" / "done.json").read_text())
    assert done["resumed_from"] == 1 and done["steps"] == 2
    new = torch.load(out / "stages" / "vit" / "ckpt.pt", weights_only=True)
    assert [h["step"] for h in new["history"]] == [1, 2]
    assert new["history"][0] == old["history"][0]  # step 1 was not trained again
    # the old data files were used as they are, not rendered again
    for path in (OLD_RUN / "data").rglob("*"):
        if path.is_file():
            assert digest(path) == digest(out / "data" / path.relative_to(OLD_RUN / "data")), path


def test_smoke_runs_every_stage(smoke_run):
    out, _ = smoke_run
    for stage in STAGES:
        assert (out / "stages" / stage / "done.json").is_file(), stage
    vae = json.loads((out / "stages" / "vae" / "done.json").read_text())
    assert vae["steps"] == 2 and vae["resumed_from"] == 0 and vae["scaling_factor"] > 0
    for stage in ("vit", "vae", "llm", "detok1", "detok2"):
        assert list((out / "stages" / stage).glob("*.fp16.safetensors")), stage
    # the stages' own evaluations ran (they record an error instead of failing the stage)
    for stage, key in (("llm", "generation"), ("detok1", "heldout"), ("detok2", "heldout")):
        evaluation = json.loads((out / "stages" / stage / "done.json").read_text())[key]
        assert "error" not in evaluation, (stage, evaluation)
    manifest = json.loads((out / "export" / "nano_manifest.json").read_text())
    assert set(manifest["finished_stages"]) == set(TRAINED)
    assert manifest["bytes"] <= SIZE_LIMIT_BYTES
    assert {"seed_x_i", "seed_x_edit", "tryon", "slide", "story", "designer"} <= set(manifest["adapters"])
    assert manifest["render_defaults"] == dict(seed=42, num_inference_steps=2, guidance_scale=3.0)
    # How long it took is a benchmark's business, not a test's.


def test_export_loads_through_the_release_loader(smoke_run):
    from core_models.stack import SeedXStack

    out, _ = smoke_run
    stack = SeedXStack.from_pretrained(out / "export", "seed_x_i", dtype=torch.float32)
    assert stack.config.num_img_tokens == 16 and len(stack.tokenizer) == stack.config.llm["vocab_size"]
    assert stack.detokenizer(2).unet.conv_in.in_channels == 8
    assert (out / "export" / "adapters" / "tryon" / "adapter_config.json").is_file()


# --- what is on disk, and how it is read ------------------------------------------------------------

def test_every_file_of_a_run_loads_with_weights_only(smoke_run):
    """Checkpoints, data and feature caches: tensors and plain Python only, no allowlist."""
    out, _ = smoke_run
    files = sorted(out.rglob("*.pt"))
    assert {p.parent.name for p in files} >= {"data", "features", "vit", "vae", "llm", "detok1",
                                              "detok2", "lora_tryon"}
    for path in files:
        state = torch.load(path, weights_only=True)
        if path.name == "ckpt.pt":
            assert isinstance(state["rng"]["numpy"], dict), path


def test_old_checkpoints_need_exactly_the_numpy_rng_globals(tmp_path):
    old = OLD_RUN / "stages" / "vit" / "ckpt.pt"
    with pytest.raises(pickle.UnpicklingError):
        torch.load(old, weights_only=True)
    with torch.serialization.safe_globals(OLD_NUMPY_RNG_GLOBALS):
        torch.load(old, weights_only=True)
    state = load_checkpoint(old)
    assert state["rng"]["numpy"][0] == "MT19937" and state["rng"]["numpy"][1].dtype == np.uint32
    # anything beyond that state is refused, and the error says what the file asked for
    for name, foreign, named in (("path", Path("/etc"), "PosixPath"),
                                 ("float_array", np.zeros(3), "Float64DType")):
        bad = tmp_path / f"{name}.pt"
        torch.save(dict(step=1, extra=foreign), bad)
        with pytest.raises(CheckpointError, match="refusing to unpickle") as err:
            load_checkpoint(bad)
        assert str(bad) in str(err.value) and named in str(err.value)


def test_the_data_stage_renders_what_the_old_code_rendered(tmp_path):
    """From scratch, stage ``data`` gives the fixture's tokenizer and the same tensors."""
    status, log = train("--out", str(tmp_path), "--smoke", "--stages", "data")
    assert status == 0, log
    new, old = tmp_path / "data", OLD_RUN / "data"
    assert digest(new / "tokenizer" / "tokenizer.model") == digest(old / "tokenizer" / "tokenizer.model")
    for path in sorted(old.glob("*.pt")):
        a, b = torch.load(path, weights_only=True), torch.load(new / path.name, weights_only=True)
        assert a.keys() == b.keys(), path.name
        for key in a:
            if isinstance(a[key], torch.Tensor) and a[key].dtype == torch.uint8:
                assert_same_rendering(a[key], b[key], (path.name, key))
            elif isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), (path.name, key)
            else:
                assert a[key] == b[key], (path.name, key)


def assert_same_rendering(old: torch.Tensor, new: torch.Tensor, what) -> None:
    """The same pictures, up to how the installed Pillow resamples edges.

    The fixture was rendered with Pillow 13 and the suite runs on Pillow 12 (Gradio 6 needs
    it). Measured between the two: at most 1.1 % of the values differ, by at most 22 levels
    at shape edges, a mean difference of 0.02 levels. A real change in the world's rendering
    (another colour, shape, position or size) moves far more than that."""
    assert old.shape == new.shape, what
    diff = (old.int() - new.int()).abs()
    assert (diff > 0).float().mean().item() <= 0.02, what
    assert diff.float().mean().item() <= 0.05, what


def test_resume_equals_straight_run(smoke_run, tmp_path):
    src, _ = smoke_run
    runs = {}
    for name in ("resumed", "straight"):
        dst = tmp_path / name
        shutil.copytree(src / "data", dst / "data")
        shutil.copytree(src / "stages" / "data", dst / "stages" / "data")
        runs[name] = dst
    common = ["--smoke", "--stages", "vit", "--steps", "vit=4", "--no-export"]
    # 2 steps, then a stop (as on SIGINT): checkpoint written, no done.json, exit code 130
    assert train("--out", str(runs["resumed"]), *common, "--interrupt-after", "vit=2")[0] == 130
    ckpt = torch.load(runs["resumed"] / "stages" / "vit" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert not (runs["resumed"] / "stages" / "vit" / "done.json").exists()
    assert train("--out", str(runs["resumed"]), *common)[0] == 0  # resumes to 4
    assert train("--out", str(runs["straight"]), *common)[0] == 0  # 4 straight
    a = torch.load(runs["resumed"] / "stages" / "vit" / "ckpt.pt", weights_only=True)
    b = torch.load(runs["straight"] / "stages" / "vit" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for module in ("vit", "heads"):
        for key, value in a["modules"][module].items():
            assert torch.equal(value, b["modules"][module][key]), key
    done = json.loads((runs["resumed"] / "stages" / "vit" / "done.json").read_text())
    assert done["steps"] == 4 and done["resumed_from"] == 2


def test_the_entry_point_keeps_the_old_flags():
    """``python -m seedx_nano.train`` (also what the parallel LLM lane runs) takes the flags the
    old ``python -m core_models.nano.train`` took, with the new default export folder."""
    result = subprocess.run([sys.executable, "-m", "seedx_nano.train", "--help"],
                            capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    for flag in ("--out", "--smoke", "--stages", "--steps", "--minutes", "--minutes-per-stage",
                 "--batch", "--lr", "--seed", "--threads", "--n-scenes", "--n-examples",
                 "--n-pairs", "--n-eval", "--eval-samples", "--ckpt-every", "--log-every",
                 "--parallel", "--no-parallel", "--no-export", "--export-dir"):
        assert flag in result.stdout, flag
    assert "python -m seedx_nano.train" in result.stdout
    assert str(Path("plugins") / "seedx_nano" / "weights") in result.stdout


# --- training in pieces -----------------------------------------------------------------------------

def test_warm_start_from_a_run_directory_then_finished_stages_without_checkpoints(smoke_run, tmp_path):
    """``--warm-start RUN``: stages come over as they are; a finished stage kept without its
    ckpt.pt (as in the repository's nano-resume/) still feeds the stages after it."""
    src, _ = smoke_run
    kept = tmp_path / "kept"
    shutil.copytree(src / "data", kept / "data")
    for stage in ("data", "vit", "vae"):
        shutil.copytree(src / "stages" / stage, kept / "stages" / stage)
    for stage in ("vit", "vae"):
        (kept / "stages" / stage / "ckpt.pt").unlink()  # only done.json + fp16 weights
    out = tmp_path / "run"
    status, log = train("--out", str(out), "--smoke", "--warm-start", str(kept),
                        "--stages", "data,vit,vae,features", "--no-export")
    assert status == 0, log
    assert "[vit] already done, skipped" in log and "[features] done" in log
    assert (out / "features" / "examples_train.pt").is_file()
    # a second start changes nothing that is there
    before = digest(out / "stages" / "vit" / "done.json")
    assert train("--out", str(out), "--smoke", "--warm-start", str(kept), "--stages", "vit",
                 "--no-export")[0] == 0
    assert digest(out / "stages" / "vit" / "done.json") == before


def test_warm_start_from_an_export_takes_its_finished_stages(smoke_run, tmp_path):
    from seedx_nano.train.checkpoint import load_stage_modules
    from seedx_nano.train.plan import Plan
    from seedx_nano.train.run import Run
    from seedx_nano.train.warm_start import WarmStartError, warm_start

    src, _ = smoke_run
    run = Run(tmp_path / "run", Plan.smoke_plan())
    shutil.copytree(src / "data", run.data_dir)
    taken = warm_start(run, src / "export")
    assert taken == ["vit", "vae", "llm", "detok1", "detok2"]
    for stage in taken:
        done = run.done(stage)
        assert done["warm_started_from"] == str(src / "export")
    assert run.done("vae")["scaling_factor"] == json.loads(
        (src / "stages" / "vae" / "done.json").read_text())["scaling_factor"]
    from core_models.stack import SeedXStack

    shipped = SeedXStack.from_pretrained(src / "export", "seed_x_i", dtype=torch.float32)
    for stage, module in (("vit", shipped.vit), ("llm", shipped.agent)):
        state = next(iter(load_stage_modules(run, stage).values()))
        for key, value in module.state_dict().items():
            assert torch.equal(state[key], value), (stage, key)
    with pytest.raises(WarmStartError, match="neither a run directory"):
        warm_start(run, tmp_path)


# --- the de-tokenizer's objective (docs/nano.md, "Edits") ----------------------------------------

class _Copier:
    """A stand-in adapter whose UNet predicts exactly what "the picture is the source" implies,
    for either prediction type: the loss is zero where the target really is the source."""

    def __init__(self, ac, sf, kind):
        self.ac, self.sf, self.kind = ac, sf, kind
        self.resampler = lambda feats: (feats, feats.mean(dim=1))
        self.seen_feats = []

    def unet(self, sample, t, encoder_hidden_states, added_cond_kwargs):
        from types import SimpleNamespace

        self.seen_feats.append(encoder_hidden_states)
        x_t, src = sample[:, :4], sample[:, 4:]
        a = self.ac[t].view(-1, 1, 1, 1)
        x0 = src * self.sf
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        out = eps if self.kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_identity_pairs_teach_the_copy_for_either_prediction_type(kind):
    from seedx_nano.train.detokenizer import _alphas_cumprod, detok_loss

    cfg = nano_config(scaling_factor=0.5)
    cfg.scheduler["prediction_type"] = kind
    ac = _alphas_cumprod(cfg)
    g = torch.Generator().manual_seed(0)
    source = torch.randn(8, 4, 16, 16, generator=g) * 2
    edited = torch.randn(8, 4, 16, 16, generator=g)  # targets that are not the source
    feats, negative = torch.randn(8, 16, 128, generator=g), torch.zeros(1, 16, 128)
    copier = _Copier(ac, 0.5, kind)

    def loss(identity, seed=1):
        return detok_loss(copier, cfg, ac, edited, feats, negative, torch.Generator().manual_seed(seed),
                          0.0, source=source, identity=identity)["loss"].item()

    assert loss(1.0) < 1e-8  # every row "negative features + source -> the source"
    assert copier.seen_feats[-1].abs().sum() == 0  # ... conditioned on the CFG negative
    assert loss(0.0) > 0.05  # real edit targets are not a copy
    half = loss(0.5)
    assert 0 < half < loss(0.0)
    assert torch.equal(copier.seen_feats[-1][4:], feats[4:])  # the rest keep their features


def test_the_export_says_what_the_unet_predicts(smoke_run):
    out, _ = smoke_run
    config = json.loads((out / "export" / "stable-diffusion-xl-base-1.0" / "scheduler"
                         / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction"
    assert json.loads((out / "stages" / "detok2" / "done.json").read_text())["definition"] == {
        "prediction_type": "v_prediction", "identity": 0.15, "conv_in_lr": 10.0}


def test_stage_2s_conv_in_learns_at_its_own_multiple_of_the_rate(smoke_run):
    out, _ = smoke_run
    groups = load_checkpoint(out / "stages" / "detok2" / "ckpt.pt")["optimizer"]["param_groups"]
    rest, conv_in = groups
    assert len(conv_in["params"]) == 2  # conv_in's weight and bias, nothing else
    assert conv_in["lr_mult"] == 10.0 and "lr_mult" not in rest
    assert conv_in["lr"] == pytest.approx(10.0 * rest["lr"])


def test_stage_2_refuses_a_stage_1_that_predicts_something_else(smoke_run, tmp_path):
    src, _ = smoke_run
    out = tmp_path / "run"
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("export"))
    shutil.rmtree(out / "stages" / "detok2")
    done = json.loads((out / "stages" / "detok1" / "done.json").read_text())
    done["definition"] = {"prediction_type": "epsilon"}
    (out / "stages" / "detok1" / "done.json").write_text(json.dumps(done))
    with pytest.raises(CheckpointError, match="share one scheduler"):
        train("--out", str(out), "--smoke", "--stages", "detok2", "--no-export")
    # the same stage 1 under its own prediction type is fine
    status, log = train("--out", str(out), "--smoke", "--stages", "detok2", "--no-export",
                        "--detok-prediction", "epsilon")
    assert status == 0, log


def test_cell_boxes_give_each_covered_cell_its_objects_box():
    from seedx_nano.train.data import cell_boxes

    label = np.zeros((64, 64), np.uint8)
    label[8:24, 16:40] = 1   # covers cells (rows 1-2, columns 2-4) fully
    label[60:64, 0:8] = 2    # covers a quarter of cell (7, 0): exactly min_cover
    label[0:1, 56:64] = 3    # an eighth of cell (0, 7): too little
    box = cell_boxes(label, 3)
    assert box.shape == (64, 4)
    one = [r * 8 + c for r in (1, 2) for c in (2, 3, 4)]
    assert np.allclose(box[one], [16 / 64, 8 / 64, 40 / 64, 24 / 64])
    assert np.allclose(box[7 * 8 + 0], [0, 60 / 64, 8 / 64, 1])
    rest = [i for i in range(64) if i not in one and i != 56]
    assert (box[rest] == -1).all()


def test_the_global_views_cell_boxes_are_the_grounding_answer():
    """Squeezing the picture to the square global view keeps normalised coordinates, so the
    box a token reads out there is the object's box in the picture (what grounding answers)."""
    import random

    from seedx_nano import world
    from seedx_nano.train.data import anyres_views_with_labels

    cfg = nano_config()
    for seed in range(4):
        scene = world.random_scene(random.Random(f"test-boxes/{seed}"))
        *_, (_, colour, _, box) = anyres_views_with_labels(scene, cfg, boxes=True)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            truth = np.array([x0 / scene.width, y0 / scene.height, x1 / scene.width, y1 / scene.height])
            found = [b for b in box if b[0] >= 0 and np.abs(b - truth).max() < 2.5 / 64]
            assert found, (seed, obj, truth, box[box[:, 0] >= 0])


def test_the_vit_box_read_out_trains_only_when_asked(tmp_path):
    status, log = train("--out", str(tmp_path), "--smoke", "--stages", "data,vit", "--no-export",
                        "--vit-box-weight", "1")
    assert status == 0, log
    probe = json.loads((tmp_path / "stages" / "vit" / "done.json").read_text())["probe_heldout"]
    assert 0 < probe["cell_box_bins"] < 224 and 0 < probe["down_box_bins"] < 224
    assert (tmp_path / "data" / "scenes_train_boxes.pt").is_file()
    plain = tmp_path / "plain"
    shutil.copytree(tmp_path / "data", plain / "data")
    status, log = train("--out", str(plain), "--smoke", "--stages", "vit", "--no-export")
    assert status == 0, log
    assert "cell_box_bins" not in json.loads((plain / "stages" / "vit" / "done.json").read_text())["probe_heldout"]


def test_a_vit_checkpoint_resumes_only_under_its_own_box_weight(tmp_path):
    status, log = train("--out", str(tmp_path), "--smoke", "--stages", "data,vit", "--no-export",
                        "--interrupt-after", "vit=1")
    assert status == 130, log
    assert (tmp_path / "stages" / "vit" / "ckpt.pt").is_file()
    with pytest.raises(CheckpointError, match="box_weight"):
        train("--out", str(tmp_path), "--smoke", "--stages", "vit", "--no-export",
              "--vit-box-weight", "1")
    status, log = train("--out", str(tmp_path), "--smoke", "--stages", "vit", "--no-export")
    assert status == 0, log
