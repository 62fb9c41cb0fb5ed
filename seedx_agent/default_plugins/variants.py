"""The released SEED-X variants (SEED-X, SEED-X-I, SEED-X-Edit), registered like any plugin's."""

from seedx_agent.hookspecs import hookimpl
from seedx_agent.variants import BUILTIN_VARIANTS


@hookimpl
def register_variants(register):
    for variant in BUILTIN_VARIANTS:
        register(variant)
