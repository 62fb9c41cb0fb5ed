"""The plugin manager: default plugins, then setuptools entry points of group ``seedx``.

The default plugins (`DEFAULT_PLUGINS`: the ``tiny`` preset and the released SEED-X variants) are
ordinary plugins that are always registered, as llm does with its own. Built-in skills and the
Nano are installed through the same entry point as third-party plugins (see pyproject.toml), so
the plugin API is exercised every day and ``SEEDX_LOAD_PLUGINS`` can switch them off too.

* ``SEEDX_LOAD_PLUGINS=grounding,nano`` loads only those entry points (names as ``get_plugins()``
  lists them); ``SEEDX_LOAD_PLUGINS=`` loads none. Useful to bisect a broken install.
* ``SEEDX_TRACE_PLUGINS=1`` prints every hook call, its arguments and its results to stderr.
"""

import importlib
import os
import sys
from importlib import metadata
from pprint import pformat

import pluggy

from seedx_agent import hookspecs

DEFAULT_PLUGINS = ("seedx_agent.default_plugins.variants", "seedx_agent.default_plugins.tiny")

pm = pluggy.PluginManager("seedx")
pm.add_hookspecs(hookspecs)


def load_plugins(names: str | None = None) -> None:
    """Register the ``seedx`` entry points named in ``names`` (comma-separated; None = all).

    One plugin that fails to import is reported (its name, the error, how to leave it out) and
    skipped: a broken third-party package must not take the other skills down with it."""
    available = {ep.name for ep in metadata.entry_points(group="seedx")}
    wanted = sorted(available) if names is None else [n.strip() for n in names.split(",")
                                                      if n.strip()]
    for name in wanted:
        if name not in available:
            print(f"seedx: plugin {name!r} is not installed (SEEDX_LOAD_PLUGINS)", file=sys.stderr)
            continue
        try:
            pm.load_setuptools_entrypoints("seedx", name=name)
        except Exception as exc:
            BROKEN[name] = f"{type(exc).__name__}: {exc}"
            print(f"seedx: plugin {name!r} failed to load and is skipped: {BROKEN[name]} "
                  "(reinstall it, or leave it out with SEEDX_LOAD_PLUGINS)", file=sys.stderr)


BROKEN: dict[str, str] = {}
"""Plugins that failed to load, by entry-point name, with the error (``seedx plugins`` shows
them)."""


def _trace_before(hook_name, hook_impls, kwargs):
    plugins = ", ".join(impl.plugin_name for impl in hook_impls)
    print(f"\n{hook_name}({pformat(kwargs)}) -> [{plugins}]", file=sys.stderr)


def _trace_after(outcome, hook_name, hook_impls, kwargs):
    if outcome.exception is not None:
        print(f"{hook_name} raised {outcome.exception!r}", file=sys.stderr)
        return
    print(f"{hook_name} results: {pformat(outcome.get_result())}", file=sys.stderr)
    # register-style hooks return nothing: what they did shows in their arguments' state
    print(f"{hook_name} arguments after the call: {pformat(kwargs)}", file=sys.stderr)


def get_plugins(all: bool = False) -> list[dict]:
    """Every registered plugin: ``name``, ``package`` and ``version`` (None if not installed
    from a distribution), and the ``hooks`` it implements. Default plugins only with ``all``."""
    dists = dict(pm.list_plugin_distinfo())
    plugins = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        if name in DEFAULT_PLUGINS and not all:
            continue
        dist = dists.get(plugin)
        plugins.append({
            "name": name,
            "package": dist.metadata["Name"] if dist else None,
            "version": dist.version if dist else None,
            "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()),
        })
    return sorted(plugins, key=lambda p: p["name"])


if os.environ.get("SEEDX_TRACE_PLUGINS", "") not in ("", "0"):
    pm.add_hookcall_monitoring(_trace_before, _trace_after)
for _name in DEFAULT_PLUGINS:
    pm.register(importlib.import_module(_name), name=_name)
load_plugins(os.environ.get("SEEDX_LOAD_PLUGINS"))
