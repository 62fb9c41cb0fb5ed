"""The SEED-X Nano training pipeline: a ``--smoke`` run of every stage, and resume == straight.

The smoke run uses the real Nano sizes (the same classes as the shipped model) on a few dozen
scenes, with one or two steps per stage, so CI proves that data, ViT, VAE, feature caching, LLM
pre-training, both de-tokenizer stages, the LoRA adapters and the export still run end to end.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from core_models.nano import train
from core_models.nano.config import nano_config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("nano") / "run"
    started = time.time()
    assert train.main(["--out", str(out), "--smoke"]) == 0
    return out, time.time() - started


def test_nano_config_is_a_seedx_config():
    cfg = nano_config()
    assert cfg.base_resolution == 64 and cfg.num_img_tokens == 16
    assert len(cfg.resolution_grids) == 8
    assert cfg.vit["image_size"] == 64 and cfg.vit["n_queries"] == 64  # vit_down: 64 -> 16
    assert cfg.unet["cross_attention_dim"] == 128


def test_smoke_runs_every_stage(smoke_run):
    out, seconds = smoke_run
    for stage in train.STAGES:
        assert (out / "stages" / stage / "done.json").is_file(), stage
    vae = json.loads((out / "stages" / "vae" / "done.json").read_text())
    assert vae["steps"] == 2 and vae["scaling_factor"] > 0
    for stage in ("vit", "vae", "llm", "detok1", "detok2"):
        assert list((out / "stages" / stage).glob("*.fp16.safetensors")), stage
    manifest = json.loads((out / "export" / "nano_manifest.json").read_text())
    assert set(manifest["finished_stages"]) == set(train.TRAINED)
    assert manifest["bytes"] <= train.SIZE_LIMIT_BYTES
    assert {"seed_x_i", "seed_x_edit", "tryon", "slide", "story", "designer"} <= set(manifest["adapters"])
    # How long it took is a benchmark's business, not a test's (seconds is kept for the log).


def test_export_loads_through_the_release_loader(smoke_run):
    from core_models.stack import SeedXStack

    out, _ = smoke_run
    stack = SeedXStack.from_pretrained(out / "export", "seed_x_i", dtype=torch.float32)
    assert stack.config.num_img_tokens == 16 and len(stack.tokenizer) == stack.config.llm["vocab_size"]
    assert stack.detokenizer(2).unet.conv_in.in_channels == 8
    assert (out / "export" / "adapters" / "tryon" / "adapter_config.json").is_file()


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
    assert train.main(["--out", str(runs["resumed"]), *common, "--interrupt-after", "vit=2"]) == 130
    ckpt = torch.load(runs["resumed"] / "stages" / "vit" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert not (runs["resumed"] / "stages" / "vit" / "done.json").exists()
    assert train.main(["--out", str(runs["resumed"]), *common]) == 0  # resumes to 4
    assert train.main(["--out", str(runs["straight"]), *common]) == 0  # 4 straight
    a = torch.load(runs["resumed"] / "stages" / "vit" / "ckpt.pt", weights_only=False)
    b = torch.load(runs["straight"] / "stages" / "vit" / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for module in ("vit", "heads"):
        for key, value in a["modules"][module].items():
            assert torch.equal(value, b["modules"][module][key]), key
    done = json.loads((runs["resumed"] / "stages" / "vit" / "done.json").read_text())
    assert done["steps"] == 4
