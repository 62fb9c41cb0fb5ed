"""The ``tiny`` preset: an UNTRAINED random-weight SEED-X with the official structure.

Its text and pictures are noise; it exists so every real code path (any-res, the ViT, the KV
cache, both de-tokenizer stages, skills, the store) runs offline in seconds, in tests above all.
"""

from typing import Any

from seedx_agent.hookspecs import hookimpl
from seedx_agent.presets import Preset

TINY = "tiny"
NOTICE = ("the 'tiny' preset is an UNTRAINED random-weight SEED-X stack: its text and images are "
          "noise; it exists to exercise the real code paths offline")


def build_tiny(**kwargs: Any):
    import logging

    from core_models.config import SeedXConfig
    from seedx_agent.runtime import RenderDefaults, Runtime

    logging.getLogger("seedx_agent").warning(NOTICE)
    runtime = Runtime.from_config(SeedXConfig.tiny(), name=TINY, **kwargs)
    runtime.notice = NOTICE
    # four denoising steps: its pictures are noise however many steps it takes
    runtime.render_defaults = RenderDefaults(num_inference_steps=4)
    return runtime


@hookimpl
def register_presets(register):
    register(Preset(name=TINY, description="UNTRAINED random-weight SEED-X with tiny widths "
                                           "(exercises the code paths; its output is noise)",
                    build=build_tiny))
