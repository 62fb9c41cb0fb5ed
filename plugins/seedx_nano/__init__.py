"""SEED-X Nano: a small SEED-X trained from scratch on a procedural world (issue 4), as a plugin.

A built-in model plugin written like a third-party one: installed through the ``seedx`` entry
point (``nano = "seedx_nano"``, pyproject.toml), using only public names of ``core_models`` and
``seedx_agent``. It brings

* the world and its tasks: ``world`` draws the scenes, ``tasks`` turns them into canonical
  requests and answers, ``analyser`` reads pictures back without a model, ``metrics`` scores;
* the model: ``config`` (its `SeedXConfig`), ``train`` (``python -m seedx_nano.train``: the
  resumable training pipeline), ``weights/`` (the shipped export) and ``manifest`` (what an
  export says about its training);
* its entries into the agent, through the two hooks below: the ``nano`` preset (``preset``) and
  the ``seedx eval nano`` command (``cli``, scoring with ``evaluate``).

Importing the package is cheap (no torch, no click): plugin discovery and the CLI import every
plugin at start-up, so the hooks import their modules when they are called.
"""

from seedx_agent import hookimpl


@hookimpl
def register_presets(register):
    """The ``nano`` preset; the default model once the shipped Nano meets its thresholds."""
    from .preset import nano_preset

    register(nano_preset())


@hookimpl
def register_commands(cli):
    """``seedx eval nano``, under the core's ``eval`` group."""
    from .cli import nano_eval

    cli.commands["eval"].add_command(nano_eval)
