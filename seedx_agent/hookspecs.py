"""Every hook a seedx plugin can implement. Documented one by one in docs/plugins.md.

Hooks that add things take a ``register`` callback instead of returning lists, so the host can
validate, de-duplicate and report on what each plugin registered (the simonw/llm pattern).
"""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("seedx")
hookimpl = HookimplMarker("seedx")


@hookspec
def register_presets(register):
    """Register named models: call ``register(preset)`` with a ``seedx_agent.Preset``."""


@hookspec
def register_variants(register):
    """Register model variants: call ``register(variant)`` with a ``seedx_agent.Variant``."""


@hookspec
def register_skills(register):
    """Register skills: call ``register(skill)`` with an instance of a ``Skill`` subclass."""


@hookspec
def register_commands(cli):
    """Add commands to the ``seedx`` CLI; ``cli`` is its click group."""


@hookspec
def turn_done(session, turn):
    """Observe a stored turn: ``session`` is its SessionRecord, ``turn`` its TurnRecord."""
