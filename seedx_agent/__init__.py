"""seedx-agent: host the SEED-X stack and use it as an agent.

The public facade: everything an embedding application or a plugin author needs is importable
from here. Importing it stays cheap (no torch): the CLI, plugin discovery and plugins import it,
so the model-side names are resolved lazily on first use.

    import seedx_agent

    runtime = seedx_agent.from_pretrained()                # default preset, or a SEED-X-17B folder
    session = runtime.open_session()
    done = session.ask("Describe the image.", ["photo.jpg"])
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl
from .skills import ActionResult, Skill, SkillContext, SkillReply, SkillRequest
from .types import (Action, ActionEvent, BoxFound, BoxPart, DenoiseStep, ErrorEvent, Event,
                    ImageDone, ImagePart, ImageStarted, Notice, Part, Provenance, TextDelta, TextPart,
                    TurnDone, parts_to_content_blocks)
from .variants import PromptTemplate, ResidencyPolicy, Variant, VariantRegistry

__version__ = "0.1.0"

_LAZY = {
    "Runtime": ("seedx_agent.runtime", "Runtime"),
    "Session": ("seedx_agent.session", "Session"),
    "Placement": ("seedx_agent.placement", "Placement"),
    "SessionStore": ("seedx_agent.store", "SessionStore"),
    "TurnRecord": ("seedx_agent.store", "TurnRecord"),
    "SessionRecord": ("seedx_agent.store", "SessionRecord"),
    "get_plugins": ("seedx_agent.plugins", "get_plugins"),
    "pm": ("seedx_agent.plugins", "pm"),
}


def from_pretrained(path_or_preset: str | None = None, **kwargs: Any):
    """Load a runtime: a preset (``"nano"``, ``"tiny"``; default `presets.DEFAULT_PRESET`) or a
    SEED-X-17B folder.

    Keyword arguments go to `seedx_agent.runtime.Runtime.from_pretrained` (``dtype``,
    ``placement``, ``variant``, ``variants``, ``residency``).
    """
    from .presets import DEFAULT_PRESET
    from .runtime import Runtime

    return Runtime.from_pretrained(path_or_preset or DEFAULT_PRESET, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'seedx_agent' has no attribute {name!r}")


__all__ = [
    "from_pretrained", "hookimpl", "Skill", "SkillContext", "SkillReply", "SkillRequest",
    "ActionResult", "Action", "ActionEvent", "BoxFound", "BoxPart", "DenoiseStep", "ErrorEvent",
    "Event", "ImageDone", "ImagePart", "ImageStarted", "Notice", "Part", "Provenance", "TextDelta",
    "TextPart", "TurnDone", "parts_to_content_blocks", "PromptTemplate", "ResidencyPolicy",
    "Variant", "VariantRegistry", *_LAZY,
]
