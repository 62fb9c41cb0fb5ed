"""The ``seedx`` command line: one click group, a module per command, plugins add their own.

    seedx chat     [--model NAME|PATH] [--placement PLAN] [--store DIR] [--session ID] …
    seedx run      SCRIPT.yaml --out DIR [--model …] [--placement …]
    seedx smoke    --out DIR [--model …] [--placement …]
    seedx plugins  [--json]
    seedx sessions list | show ID | export ID DEST   [--store DIR]
    seedx convert  SRC DST [--dtype …] [--max-shard-size …] [--qwen-visual]
    seedx plan     TREE | --official  [--profile 80gb|48gb|24gb] [--max-memory …] [--json]
    seedx eval     …   (empty here: model plugins add their evaluations, e.g. ``seedx eval nano``)

After the group is built, ``register_commands(cli)`` lets every plugin add commands to it (a
broken plugin is reported and skipped, never takes the CLI down). Every command is documented in
docs/cli.md; a test walks this group and checks that.

Starting the CLI must be cheap: ``seedx --help``, ``seedx plugins`` and ``seedx sessions`` never
import torch; only the commands that load a model or convert weights do, inside the command.

Exit status (`errors`): 0 when the command did its job (a scripted session whose turns failed
did its job: the failures are in the transcript), 2 for a bad invocation or a broken script, 130
when interrupted, 1 for anything unexpected.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from . import chat, convert, plan, plugins, run, serve, sessions, ui
from .errors import EXIT_INTERRUPTED, EXIT_OK, CliError

__all__ = ["cli", "main", "add_plugin_commands", "CliError"]


class _SeedxGroup(click.Group):
    """The top-level group; its help ends with what the default model is, asked of the presets
    when the help is shown (plugins decide it)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help_text(ctx, formatter)
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(_default_model_help())


def _default_model_help() -> str:
    from ..presets import default_preset, presets

    try:
        name = default_preset()
        description = presets()[name].description
    except Exception as exc:  # a broken preset plugin must not break --help
        return f"(the presets could not be listed: {exc})"
    return (f"The default model is {name!r}: {description}. Pass --model PATH for the released "
            "weights; seedx plugins lists the presets.")


@click.group(cls=_SeedxGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Docs: docs/cli.md. Exit status: 0 ok, 2 bad invocation or broken script, "
                    "1 other.")
@click.version_option(__version__, prog_name="seedx-agent", message="%(prog)s %(version)s")
def cli() -> None:
    """SEED-X as an agent: multi-turn sessions with images in and out, and skills."""


@cli.group("eval")
def evaluate() -> None:
    """Evaluate a model; model plugins add their evaluations."""


# the modules keep their names (seedx_agent.cli.run is the module); their commands are added here
for _command in (chat.chat, run.run, run.smoke, plugins.plugins, sessions.sessions,
                 convert.convert, plan.plan, serve.serve, ui.ui):
    cli.add_command(_command)


def add_plugin_commands() -> None:
    """Let every plugin add its commands (``register_commands(cli)``). Runs once on import;
    call it again after registering a plugin in code (tests do)."""
    from ..plugins import pm

    try:
        pm.hook.register_commands(cli=cli)
    except Exception as exc:  # one broken plugin must not take the whole CLI down
        print(f"seedx: a plugin failed to add its commands: {exc!r}", file=sys.stderr)


add_plugin_commands()


# Optional quantization backends announce at import what this machine lacks (CUDA kernels, the
# ``kernels`` package, torch.compile registrations), whether or not anything is quantized:
# peft and diffusers import them whenever they are installed. The CLI owns its process's
# logging, so it keeps only their errors; the library itself leaves logging to the application.
IMPORT_TIME_CHATTER = ("torchao", "bitsandbytes", "torch.utils._pytree",
                       "diffusers.quantizers.torchao")


def main(argv: list[str] | None = None) -> int:
    """Run ``seedx`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    import logging

    for name in IMPORT_TIME_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        result = cli.main(args=argv, prog_name="seedx", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("seedx: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if result is None else int(result)
