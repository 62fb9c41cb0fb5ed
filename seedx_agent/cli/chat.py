"""``seedx chat``: a REPL in which every line is a user turn, and ``/`` lines set up the next ones.

The REPL owns only what a conversation at a prompt needs: pictures attached to the next turn,
the one-turn toggles (``/draw``, ``/edit``), the options set for all later turns (``/set``,
`ChatOptions`), Ctrl-C as the turn's cancellation, and a line of its own for every mistake (the
REPL outlives anything one line does). Turns are stored as they finish, so a chat can be resumed.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from .chat_options import ChatOptions
from .errors import EXIT_OK, CliError
from .model import load_runtime, model_options, print_banner
from .sessions import export_session, open_store, resolve_session, store_option
from .turn_printer import TurnPrinter

if TYPE_CHECKING:

    from ..session import Session
    from ..store import SessionStore

CHAT_HELP = """\
  TEXT              send a turn
  /image PATH       attach an image to the next turn (repeat for several); PATH may be
                    version:N, a picture of this session
  /versions         the session's pictures, numbered, with the one each was made from
  /revert N         make version N the working image: the next /edit branches from it
  /draw             toggle: the next turn must answer with an image
  /edit             toggle: the next turn edits its image (or the latest one)
  /set NAME VALUE   set a turn option for all later turns, e.g. /set guidance_scale 5
                    (seed, num_inference_steps, guidance_scale, image_guidance_scale,
                    max_new_tokens, skill, variant, ...); /set alone lists the values in force
  /unset NAME       back to the default for NAME
  /skill [NAME]     use skill NAME for the following turns (no name: none)
  /save [DIR]       export the session (transcript + images) to DIR
  /help             this list
  /quit             leave (Ctrl-D too); Ctrl-C stops a running turn"""


@click.command("chat")
@model_options
@store_option
@click.option("--session", "session_id", metavar="ID",
              help="resume a stored session (an id prefix will do)")
@click.option("--skill", metavar="NAME", help="skill for every turn (e.g. grounding)")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=None, metavar="N",
              help="reply length limit (default: the variant's); the same as /set max_new_tokens N")
def chat(model: str | None, placement: str | None, store: Path | None, session_id: str | None,
         skill: str | None, max_new_tokens: int | None) -> int:
    """Talk to SEED-X in a REPL: each line is a user turn; /help lists the commands (/image,
    /versions, /revert, /draw, /edit, /set, /unset, /skill, /save, /quit)."""
    opened = open_store(store, create=True)
    # a wrong id is refused before the model loads (which takes the time)
    resumed = resolve_session(opened, session_id) if session_id is not None else None
    runtime = load_runtime(model, placement)
    print_banner(runtime, sys.stdout)
    session = runtime.open_session(store=opened, session_id=resumed, title="chat")
    repl = ChatRepl(session, opened)
    if skill:
        repl.choose_skill(skill)
    if max_new_tokens is not None:
        repl.options.set("max_new_tokens", max_new_tokens)
    verb = "resumed" if resumed else "new"
    click.echo(f"{verb} session {session.id} in {opened.root} ({len(session.history)} turns); "
               "/help lists the commands")
    return repl.loop()


class _Pending:
    """What the next turn carries besides its text and the options set; reset after every turn."""

    def __init__(self) -> None:
        self.images: list[Any] = []  # pictures, or "version:N"
        self.force_image = False
        self.edit = False


class ChatRepl:
    """The loop over input lines; ``stdin``/``stdout``/``stderr`` default to the process's."""

    def __init__(self, session: "Session", store: "SessionStore", stdin: TextIO | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.session = session
        self.store = store
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.interactive = self.stdin is sys.stdin and self.stdin.isatty()
        self.pending = _Pending()
        self.options = ChatOptions(session)

    def loop(self) -> int:
        while True:
            try:
                line = self._read()
            except EOFError:
                print(file=self.out)
                return EXIT_OK
            except KeyboardInterrupt:
                print("\n(/quit or Ctrl-D leaves)", file=self.out)
                continue
            line = line.strip()
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if self.command(line) == "quit":
                        return EXIT_OK
                else:
                    self.turn(line)
            except click.ClickException as exc:
                print(f"error: {exc.format_message()}", file=self.err, flush=True)
            except Exception as exc:  # the REPL outlives anything one line does
                print(f"error: {type(exc).__name__}: {exc}", file=self.err, flush=True)

    def _read(self) -> str:
        if self.interactive:
            return input("you> ")
        line = self.stdin.readline()
        if not line:
            raise EOFError
        print(f"you> {line.rstrip()}", file=self.out, flush=True)  # keep piped logs readable
        return line

    def command(self, line: str) -> str | None:
        """Run one ``/`` line; returns ``"quit"`` to leave."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            self.say(CHAT_HELP)
        elif name == "/image":
            self._attach(_unquote(arg))
        elif name == "/versions":
            from ..versions import describe, working_version

            self.say(describe(self.session.versions(), working_version(self.session.history)))
        elif name == "/revert":
            if not arg.isdigit():
                raise CliError("usage: /revert N (/versions lists them)")
            try:
                version = self.session.revert(int(arg))
            except LookupError as exc:
                raise CliError(str(exc)) from None
            self.say(f"version {version.number} is the working image again; an /edit now "
                     "branches from it")
        elif name == "/draw":
            self.pending.force_image = not self.pending.force_image
            self.say(f"next turn draws an image: {_on_off(self.pending.force_image)}")
        elif name == "/edit":
            self.pending.edit = not self.pending.edit
            self.say(f"next turn is an edit: {_on_off(self.pending.edit)}")
            untrained = self.session.runtime.untrained
            if self.pending.edit and untrained and not self.pending.force_image:
                self.say("(the untrained model draws only when forced: add /draw)")
        elif name == "/set":
            self._set(arg)
        elif name == "/unset":
            if not arg:
                raise CliError("usage: /unset NAME")
            self.say(self.options.unset(arg))
        elif name == "/skill":
            self.choose_skill(_unquote(arg))
        elif name == "/save":
            dest = Path(_unquote(arg) or f"seedx-session-{self.session.id[:8]}")
            export_session(self.store, self.session.id, dest)
            self.say(f"exported session {self.session.id} to {dest}/ (it is also kept in "
                     f"{self.store.root})")
        else:
            raise CliError(f"unknown command {name}; /help lists them")
        return None

    def _set(self, arg: str) -> None:
        if not arg:
            self.say(self.options.listing())
            return
        name, _, value = arg.partition(" ")
        value = _unquote(value.strip())
        if not value:
            raise CliError(f"usage: /set {name} VALUE (/unset {name} for the default)")
        self.say(self.options.set(name, value))

    def choose_skill(self, name: str) -> None:
        if name in ("", "none", "off"):
            self.options.unset("skill")
            self.say("no skill for the following turns")
            return
        self.options.set("skill", name)
        self.say(f"skill for the following turns: {name}")

    def _attach(self, path: str) -> None:
        from core_models.image_io import ImageInputError, load_image

        from ..versions import lookup, version_number

        if not path:
            raise CliError("usage: /image PATH")
        if (number := version_number(path)) is not None:
            try:
                version = lookup(self.session.versions(), number)
            except LookupError as exc:
                raise CliError(f"not attached: {exc}") from None
            self.pending.images.append(path)
            self.say(f"attached version {number} ({version.image.width}x{version.image.height}) "
                     "to the next turn")
            return
        try:
            image = load_image(os.path.expanduser(path))
        except ImageInputError as exc:
            raise CliError(f"not attached: {exc}") from None
        self.pending.images.append(image)
        self.say(f"attached {path} ({image.width}x{image.height}) to the next turn")

    def turn(self, text: str) -> None:
        """One user turn with what is pending and the options set; Ctrl-C cancels it."""
        pending, self.pending = self.pending, _Pending()
        once = {k: True for k in ("force_image", "edit") if getattr(pending, k)}
        options = self.options.for_turn(**once)
        cancel = threading.Event()
        printer = TurnPrinter(self.out, self.err, image_path=self.store.image_path)
        printer.begin("seedx> ")
        with _CtrlCCancels(cancel):
            for event in self.session.turn(text, pending.images, options=options, cancel=cancel):
                printer(event)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def _unquote(text: str) -> str:
    """``"my photo.png"`` -> ``my photo.png``; text that is not one quoted word stays as it is."""
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


class _CtrlCCancels:
    """While a turn runs, Ctrl-C sets ``cancel`` (the turn stops cleanly) instead of raising."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel
        self.previous: Any = None

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, lambda *_: self.cancel.set())

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
