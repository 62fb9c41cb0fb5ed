"""How a ``seedx`` command fails: the exit statuses and the error for a bad invocation.

A bad invocation or a broken script is the user's to fix, so it is one line on stderr and exit
status 2, never a traceback; anything unexpected is a bug and keeps its traceback (status 1).
"""

from __future__ import annotations

import sys

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(click.ClickException):
    """A bad invocation or a broken script: printed as ``seedx: error: …``, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file=None) -> None:
        click.echo(f"seedx: error: {self.format_message()}", file=file or sys.stderr)
