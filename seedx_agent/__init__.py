"""seedx-agent: host the SEED-X stack and use it as an agent.

The public facade: everything an embedding application or a plugin author needs is importable
from here. Importing it stays cheap (no torch): the CLI, plugin discovery and plugins import it,
so the model-side names are resolved lazily on first use.

    import seedx_agent

    runtime = seedx_agent.from_pretrained()                # default preset, or a SEED-X-17B folder
    session = runtime.open_session()
    done = session.ask("Describe the image.", ["photo.jpg"], seed=7)
"""

from __future__ import annotations

from typing import Any

from core_models.boxes import LOC_BINS
from core_models.files import atomic_write, write_json

from .artifacts import PROVENANCE_KEY, load_picture, provenance_json, read_provenance, save_png
from .hookspecs import hookimpl
from .presets import Preset, PresetError, default_preset
from .skills import (ActionResult, Skill, SkillContext, SkillReply, SkillRequest,
                     SkillRequestError)
from .turn_options import RenderDefaults, TurnOptions
from .types import (Action, ActionEvent, BoxFound, BoxPart, DenoiseStep, ErrorEvent, Event,
                    ImageDone, ImagePart, ImageStarted, Notice, Part, Provenance, TextDelta, TextPart,
                    TurnDone, parts_to_content_blocks)
from .user_dir import user_dir
from .variants import AdapterWeights, PromptTemplate, ResidencyPolicy, Variant, VariantRegistry

__version__ = "0.1.0"

_LAZY = {
    "Runtime": ("seedx_agent.runtime", "Runtime"),
    "Session": ("seedx_agent.session", "Session"),
    "Placement": ("seedx_agent.placement", "Placement"),
    "SkillHost": ("seedx_agent.skill_host", "SkillHost"),
    "SessionStore": ("seedx_agent.store", "SessionStore"),
    "TurnRecord": ("seedx_agent.store", "TurnRecord"),
    "SessionRecord": ("seedx_agent.store", "SessionRecord"),
    "get_plugins": ("seedx_agent.plugins", "get_plugins"),
    "pm": ("seedx_agent.plugins", "pm"),
    "ChatSeedX": ("seedx_agent.integrations.langchain", "ChatSeedX"),
}


def from_pretrained(name_or_path: str | None = None, **kwargs: Any):
    """Load a runtime: a preset by name (``"nano"``, ``"tiny"``, or one a plugin registers;
    default `default_preset()`), else a SEED-X model folder.

    Keyword arguments go to the preset, or to `seedx_agent.runtime.Runtime.from_pretrained`
    (``config``, ``dtype``, ``placement``, ``variant``, ``variants``, ``residency``).
    """
    from .presets import from_pretrained as load

    return load(name_or_path, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'seedx_agent' has no attribute {name!r}")


__all__ = [
    "from_pretrained", "hookimpl", "Preset", "PresetError", "default_preset",
    "Skill", "SkillContext", "SkillReply", "SkillRequest", "SkillRequestError", "ActionResult",
    "TurnOptions",
    "RenderDefaults", "Action", "ActionEvent", "BoxFound", "BoxPart", "DenoiseStep", "ErrorEvent",
    "Event", "ImageDone", "ImagePart", "ImageStarted", "Notice", "Part", "Provenance", "TextDelta",
    "TextPart", "TurnDone", "parts_to_content_blocks", "AdapterWeights", "PromptTemplate",
    "ResidencyPolicy", "Variant", "VariantRegistry", "LOC_BINS", "atomic_write", "write_json",
    "PROVENANCE_KEY", "save_png", "read_provenance", "load_picture", "provenance_json",
    "user_dir", *_LAZY,
]
