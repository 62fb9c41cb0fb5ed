"""An SDXL base folder in diffusers format, as users have it: fp32 files, or only the ``.fp16``
variant (what ``variant="fp16"`` downloads)."""

import json

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from core_models.stack import load_unet, load_vae
from conftest import GOLDEN

CONFIG = json.loads((GOLDEN / "resampler" / "config.json").read_text())["adapter_sdxl_conditioning"]


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_unet_and_vae_load_from_either_variant(tmp_path, variant):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**CONFIG["tiny_unet_config_used_for_capture"]).eval()
    vae = AutoencoderKL(**CONFIG["tiny_vae_config_used_for_capture"]).eval()
    dtype = torch.float16 if variant else torch.float32
    unet.to(dtype).save_pretrained(tmp_path / "sdxl" / "unet", variant=variant)
    vae.to(dtype).save_pretrained(tmp_path / "sdxl" / "vae", variant=variant)
    if variant:
        assert list((tmp_path / "sdxl" / "unet").glob("*.fp16.safetensors"))

    loaded_unet = load_unet(tmp_path / "sdxl", dtype=torch.float32, progress=False)
    loaded_vae = load_vae(tmp_path / "sdxl", dtype=torch.float32, progress=False)
    for ours, theirs in ((loaded_unet, unet), (loaded_vae, vae)):
        mine, ref = ours.state_dict(), theirs.state_dict()
        assert mine.keys() == ref.keys()
        for key in ref:
            assert mine[key].dtype == torch.float32
            torch.testing.assert_close(mine[key], ref[key].float(), atol=0, rtol=0)
