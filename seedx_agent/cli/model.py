"""The model a command talks to: ``--model`` and ``--placement``, loading, and the banner.

Names (``tiny``, ``nano``, whatever a plugin registers) and folders both go through
``seedx_agent.from_pretrained``, so the CLI knows no preset itself. The banner prints the
runtime's ``notice`` (what the user must know about the model, e.g. that it is untrained); a
preset that also logs that notice while it loads is not printed twice.

torch is imported only here, and only when a command actually loads a model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, TextIO

import click

from ..progress import status
from .errors import CliError

if TYPE_CHECKING:
    from ..runtime import Runtime

_RUNTIMES: dict[tuple[str, str], "Runtime"] = {}
"""Runtimes this process loaded. A runtime is shareable, so ``smoke`` then ``run`` in one process
(or a test calling ``main`` twice) loads the model once."""


def model_options(command: Callable) -> Callable:
    """``--model`` and ``--placement``, for every command that loads a model."""
    command = click.option(
        "--placement", default=None, metavar="PLAN",
        help="cpu (default), cuda[:N], split:DEV,DEV, offload[:DEV], auto, or a memory "
             "profile (80gb, 48gb, 24gb[@DEV]); add +int8 or +nf4 to quantize the LLM "
             "(cpu+int8); seedx plan estimates one before loading")(command)
    return click.option(
        "--model", default=None, metavar="NAME|PATH",
        help="a preset (seedx plugins lists them) or a model folder; default: "
             "the default preset (seedx --help says which)")(command)


def load_runtime(model: str | None, placement: str | None) -> "Runtime":
    """The runtime for ``model`` (default: the default preset) on ``placement``, loaded behind a
    status line. An unknown name, a missing plugin or folder is a `CliError`."""
    import seedx_agent

    from ..placement import Placement
    from ..presets import PresetError, default_preset

    try:
        name = model or default_preset()
    except Exception as exc:  # a broken preset plugin
        raise CliError(f"cannot list the presets: {exc}") from None
    try:
        plan = Placement.parse(placement or "cpu")
    except ValueError as exc:
        raise CliError(f"--placement: {exc}") from None
    key = (name, repr(plan))
    if key not in _RUNTIMES:
        with status(f"loading model {name!r} ({placement or 'cpu'})"), _HeldWarnings() as held:
            try:
                runtime = seedx_agent.from_pretrained(name, placement=plan)
            except PresetError as exc:
                raise CliError(str(exc)) from None
            except FileNotFoundError as exc:
                raise CliError(str(exc)) from None
            held.drop_repeats_of(runtime.notice)
        _RUNTIMES[key] = runtime
    return _RUNTIMES[key]


def print_banner(runtime: "Runtime", stream: TextIO) -> None:
    """The runtime's notice between two rules, if it has one."""
    if runtime.notice:
        rule = "=" * 78
        print(f"{rule}\nNOTE: {runtime.notice}\n{rule}", file=stream, flush=True)


class _HeldWarnings(logging.Handler):
    """While a model loads, hold what is logged; afterwards pass it on, except the records that
    only repeat the runtime's notice (the banner says it, prominently)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._notice: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def drop_repeats_of(self, notice: str | None) -> None:
        self._notice = notice

    def __enter__(self) -> "_HeldWarnings":
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for record in self.records:
            if self._notice and self._notice in record.getMessage():
                continue
            logging.getLogger(record.name).handle(record)
