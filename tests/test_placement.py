"""The placement plan: one object for CPU, one GPU, several GPUs and offload.

GPUs are not available in CI, so the multi-device path is exercised with CPU + disk offload,
which goes through the same accelerate device map and hooks as a GPU split.
"""

import pytest
import torch

from seedx_agent.placement import Placement
from seedx_agent.runtime import Runtime, _device_map


@pytest.mark.parametrize("spec, kind, devices", [
    ("cpu", "cpu", ("cpu",)), ("cuda", "gpu", ("cuda:0",)), ("cuda:1", "gpu", ("cuda:1",)),
    ("split:cuda:0,cuda:1", "split", ("cuda:0", "cuda:1")), ("offload", "offload", ("cuda:0",)),
])
def test_parse(spec, kind, devices):
    plan = Placement.parse(spec)
    assert (plan.kind, plan.devices) == (kind, devices)


def test_parse_rejects_nonsense():
    with pytest.raises(ValueError, match="unknown placement"):
        Placement.parse("tpu")


def test_dtype_defaults_follow_the_device():
    assert Placement.cpu().torch_dtype() == torch.float32
    assert Placement.gpu(0).torch_dtype() == torch.bfloat16
    assert Placement.gpu(0, dtype="float16").torch_dtype() == torch.float16


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    from core_models.config import SeedXConfig
    from core_models.stack import SeedXStack

    root = tmp_path_factory.mktemp("tiny-release")
    SeedXStack.from_config(SeedXConfig.tiny(), seed=0).save_pretrained(root, stages=(1,))
    return root


def test_offload_plan_splits_the_llm_and_gives_the_same_tokens(saved_tiny, tmp_path):
    plan = Placement(kind="offload", devices=("cpu",), max_memory={"cpu": 900_000},
                     offload_folder=str(tmp_path / "offload"))
    device_map = _device_map(plan, saved_tiny, "seed_x_i", torch.float32)
    llm_devices = {v for k, v in device_map.items() if k.startswith("agent.llm")}
    assert llm_devices == {"cpu", "disk"}, device_map  # some decoder layers really went to disk
    assert device_map["vit"] == "cpu"

    offloaded = Runtime.from_pretrained(saved_tiny, placement=plan, load_plugins=False)
    reference = Runtime.from_pretrained(saved_tiny, placement="cpu", load_plugins=False)
    assert (tmp_path / "offload" / "index.json").is_file()
    a = offloaded.open_session().ask("hello there", max_new_tokens=6)
    b = reference.open_session().ask("hello there", max_new_tokens=6)
    assert a.parts == b.parts
