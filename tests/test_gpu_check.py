"""The GPU check runs end to end in its CPU rehearsal (``--dry``) and writes what it promises.

The numbers of a dry run mean nothing about a GPU; what this proves is that every section's code
runs, that the JSON has each measurement, and the few facts that hold on any device: NF4 holds
fewer bytes than bf16, our de-tokenizer loop and diffusers' pipeline do the same work, and the
Nano's greedy tokens in bf16 match fp32 or part only where the margins explain it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_every_section_ran(report):
    assert report["dry"] is True and report["failed"] == []
    assert set(report["sections"]) == {"greedy", "bandwidth", "decode", "detokenizer", "profiles"}
    for name, section in report["sections"].items():
        assert "error" not in section, (name, section.get("traceback"))
        assert section["seconds"] >= 0


def test_greedy_compares_bf16_with_fp32(report):
    greedy = report["sections"]["greedy"]
    assert "bfloat16" in greedy["test"]
    for name in ("tiny", "nano"):
        cases = greedy[name]["cases"]
        assert cases and all(c["tokens"] > 0 for c in cases)
        for case in cases:
            if not case["same"]:  # a difference comes with its step and fp32 margin
                assert case["first_difference"] is not None and "explained" in case
    # the Nano is trained: its greedy answers hold in bf16, up to flips the margins explain
    assert greedy["nano"]["all_explained"]
    assert any(c["image"] for c in greedy["nano"]["cases"])


def test_decode_reports_rate_and_ratio_to_the_bandwidth_limit(report):
    decode = report["sections"]["decode"]
    bandwidth = report["sections"]["bandwidth"]["measured_bytes_per_s"]
    assert bandwidth > 0
    for label in ("bf16", "nf4"):
        rate = decode[label]
        assert rate["tokens_per_s"] > 0 and rate["bytes_per_token"] > 0
        assert rate["bandwidth_limit_tokens_per_s"] == pytest.approx(bandwidth / rate["bytes_per_token"])
        assert rate["ratio_to_limit"] == pytest.approx(rate["tokens_per_s"] / rate["bandwidth_limit_tokens_per_s"])
    # 4-bit decoder weights: the same model holds fewer bytes and reads fewer per token
    assert decode["nf4"]["weight_bytes"] < decode["bf16"]["weight_bytes"]
    assert decode["nf4"]["bytes_per_token"] < decode["bf16"]["bytes_per_token"]


def test_detokenizer_matches_diffusers_work(report):
    detok = report["sections"]["detokenizer"]
    assert detok["max_latent_difference"] < 1e-4  # same UNet, scheduler, steps: same latents
    assert detok["ratio_ours_over_diffusers"] > 0
    assert len(detok["times_s"]["ours"]) == len(detok["times_s"]["diffusers"]) == detok["reps"]


def test_without_cuda_the_real_check_refuses_clearly(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the real check would run")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry" in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_every_profile_builds_and_runs_a_full_turn(report):
    profiles = report["sections"]["profiles"]
    for name, budget in (("80gb", 80), ("48gb", 48), ("24gb", 24)):
        run = profiles[name]
        assert run["errors"] == [] and run["pictures"] == 1, run  # read, answered and drew
        # the estimate is the full-size stack's on a card, and each profile fits its card
        assert run["estimate_fits"] and run["estimated_peak_bytes"] <= budget * 2**30
    assert "nf4" in profiles["24gb"]["placement"] and "offloaded" in profiles["48gb"]["placement"]
