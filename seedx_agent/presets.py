"""Named models: ``seedx_agent.from_pretrained("tiny")``, ``("nano")``, the CLI's ``--model``.

A preset is a name plus a function that builds a `Runtime`. Plugins add presets through the
``register_presets(register)`` hook: the ``tiny`` preset is a default plugin
(`seedx_agent.default_plugins.tiny`), SEED-X Nano is the ``seedx_nano`` plugin. Names resolve
here and folders load in `Runtime.from_pretrained`; the runtime never looks at names, so the two
stay one-way.

The default model is the preset registered with ``default=True`` (the Nano, when its plugin is
loaded), else ``tiny``.

Importing this module does not import torch (the CLI reads the presets at start-up).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .runtime import Runtime

FALLBACK_PRESET = "tiny"
# Presets the project's own plugins provide, so that asking for one whose plugin is missing
# names the plugin instead of saying "unknown".
PLUGIN_OF_PRESET = {"nano": ("seedx_nano", "nano")}  # preset -> (package, entry-point name)


class PresetError(KeyError):
    """An unknown preset name (or one whose plugin is not loaded); the message says which."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Preset:
    """A named model. ``build(**kwargs)`` takes `Runtime.from_pretrained`'s keywords (``dtype``,
    ``placement``, ``variant``, ``residency``, ``progress``) and returns a `Runtime`."""

    name: str
    build: Callable[..., "Runtime"]
    description: str = ""
    default: bool = False
    # ``claims(folder)`` -> True when a model folder is this preset's kind (a Nano export has
    # ``nano_manifest.json``): ``from_pretrained(folder)`` then builds it with
    # ``build(root=folder, name=str(folder))``, so a folder behaves like the preset it came from.
    claims: Callable[[Path], bool] | None = None


def presets() -> dict[str, Preset]:
    """Every registered preset by name (the hook runs on each call: plugins may come and go in
    tests). Two plugins registering the same name is an error naming both."""
    from .plugins import pm

    found: dict[str, Preset] = {}

    def register(preset: Preset) -> None:
        if not isinstance(preset, Preset):
            raise TypeError(f"register_presets: expected a seedx_agent.Preset, got "
                            f"{type(preset).__name__}")
        other = found.get(preset.name)
        if other is not None and other.build is not preset.build:
            raise ValueError(f"preset {preset.name!r} is registered twice ({_where(other.build)} "
                             f"and {_where(preset.build)}); uninstall one, or choose plugins "
                             "with SEEDX_LOAD_PLUGINS")
        found[preset.name] = preset

    pm.hook.register_presets(register=register)
    return dict(sorted(found.items()))


def default_preset() -> str:
    """The name ``from_pretrained()`` uses when given none."""
    marked = [p.name for p in presets().values() if p.default]
    return marked[0] if marked else FALLBACK_PRESET


def get_preset(name: str) -> Preset:
    known = presets()
    if name in known:
        return known[name]
    if name in PLUGIN_OF_PRESET:
        package, entry_point = PLUGIN_OF_PRESET[name]
        installed = any(ep.name == entry_point for ep in metadata.entry_points(group="seedx"))
        why = ("is installed but not loaded (check SEEDX_LOAD_PLUGINS)" if installed
               else "is not installed (pip install -e . installs it with seedx-agent)")
        raise PresetError(f"model {name!r} comes from the {package} plugin, which {why}")
    raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(known) or 'none'} "
                      "(or give a model folder)")


def from_pretrained(name_or_path: str | Path | None = None, **kwargs: Any) -> "Runtime":
    """A preset by name; else a model folder: built by the preset that claims it (its
    ``claims``), or through `Runtime.from_pretrained`."""
    name = str(name_or_path) if name_or_path is not None else default_preset()
    if name in presets() or (name in PLUGIN_OF_PRESET and not Path(name).exists()):
        return get_preset(name).build(**kwargs)
    path = Path(name)
    if not path.exists():
        known = ", ".join(presets())
        raise FileNotFoundError(f"{name!r} is neither a preset ({known}) nor a model folder")
    for preset in presets().values():
        if preset.claims is not None and path.is_dir() and preset.claims(path):
            return preset.build(root=path, name=str(path), **kwargs)
    from .runtime import Runtime

    return Runtime.from_pretrained(path, **kwargs)


def _where(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
