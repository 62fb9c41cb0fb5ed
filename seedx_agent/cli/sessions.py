"""``seedx sessions list | show | export``: the session store, read from the command line.

Chat writes its sessions to the default store (under `seedx_agent.user_dir`), ``seedx run`` to
``DIR/store``; both are ordinary `SessionStore` folders, and every command takes ``--store``.
An id prefix is enough wherever an id is asked for. Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import click

from ..types import TextPart
from .errors import EXIT_OK, CliError
from .turn_printer import describe_image

if TYPE_CHECKING:
    from ..store import SessionStore

STORE_HELP = ("$SEEDX_HOME/sessions, else $XDG_DATA_HOME/seedx/sessions or "
              "~/.local/share/seedx/sessions")


def default_store_dir() -> Path:
    """The ``sessions`` folder of the user directory (`seedx_agent.user_dir.user_dir`)."""
    from ..user_dir import user_dir

    return user_dir() / "sessions"


def store_option(command: Callable) -> Callable:
    return click.option("--store", type=click.Path(path_type=Path), default=None, metavar="DIR",
                        help=f"session store (default: {STORE_HELP})")(command)


def open_store(path: Path | None, *, create: bool) -> "SessionStore":
    """The store at ``path`` (default: `default_store_dir`); without ``create`` it must exist."""
    from ..store import DB_NAME, SessionStore, StoreError

    root = path or default_store_dir()
    if not create and not (root / DB_NAME).exists():
        raise CliError(f"no session store at {root} (pass --store DIR; default: {STORE_HELP})")
    try:
        return SessionStore(root)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def resolve_session(store: "SessionStore", prefix: str) -> str:
    """The one session whose id starts with ``prefix``."""
    if not prefix.strip():  # "" is a prefix of every id: never let it pick one silently
        raise CliError(f"give a session id or its prefix (seedx sessions list --store {store.root})")
    ids = [s.id for s in store.list_sessions() if s.id.startswith(prefix.lower())]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise CliError(f"no session {prefix!r} in {store.root} (seedx sessions list shows them)")
    raise CliError(f"{prefix!r} matches {len(ids)} sessions; give more of the id")


def export_session(store: "SessionStore", session_id: str, dest: Path) -> None:
    """``dest/transcript.json`` and ``dest/images/`` (`SessionStore.export`: all or nothing)."""
    from ..store import StoreError

    try:
        store.export(session_id, dest)
    except StoreError as exc:
        raise CliError(str(exc)) from None


@click.group("sessions")
def sessions() -> None:
    """List, show and export stored sessions."""


@sessions.command("list")
@store_option
def list_sessions(store: Path | None) -> int:
    """Every session, oldest first: id, created, turns, model, title."""
    from ..store import DB_NAME

    root = store or default_store_dir()
    if not (root / DB_NAME).exists():
        click.echo(f"no sessions ({root} holds no store yet)")
        return EXIT_OK
    with open_store(root, create=False) as opened:
        found = opened.list_sessions()
        if not found:
            click.echo(f"no sessions in {root}")
        for s in found:
            turns = opened.next_index(s.id)
            fork = f" fork of {s.parent.session_id[:8]}@{s.parent.turn_index}" if s.parent else ""
            count = f"{turns:>3} turn" + ("s" if turns != 1 else " ")
            click.echo(f"{s.id}  {s.created_at:%Y-%m-%d %H:%M}  {count}  "
                       f"{s.metadata.get('model', '?')}  {s.title}{fork}")
    return EXIT_OK


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="print the stored records as JSON")
@store_option
def show_session(session_id: str, as_json: bool, store: Path | None) -> int:
    """One session, turn by turn: request, reply, pictures, actions, errors."""
    with open_store(store, create=False) as opened:
        session_id = resolve_session(opened, session_id)
        record, turns = opened.get_session(session_id), opened.turns(session_id)
        if as_json:
            click.echo(json.dumps({"session": record.model_dump(mode="json"),
                                   "turns": [t.model_dump(mode="json") for t in turns]}, indent=2))
            return EXIT_OK
        click.echo(f"session {record.id}  {record.title!r}  created "
                   f"{record.created_at:%Y-%m-%d %H:%M}")
        click.echo(f"  model {record.metadata.get('model', '?')}, variant {record.variant or '-'}, "
                   f"default skill {record.default_skill or '-'}")
        if record.parent:
            click.echo(f"  fork of {record.parent.session_id} at turn {record.parent.turn_index}")
        for turn in turns:
            _show_turn(opened, turn)
    return EXIT_OK


def _show_turn(store: "SessionStore", turn: Any) -> None:
    req = turn.request
    options = _request_options(req)
    flags = "".join(f" [{f}]" for f, on in (("draw", options.get("force_image")),
                                            ("edit", options.get("edit")),
                                            (f"skill {options.get('skill')}", options.get("skill")))
                    if on)
    click.echo(f"\nturn {turn.index} ({turn.status}, {turn.finish_reason}, {turn.variant}, "
               f"{turn.prompt_tokens}+{turn.reply_tokens} tokens){flags}")
    rest = {k: v for k, v in options.items() if k not in ("force_image", "edit", "skill")}
    if rest:
        click.echo("  options: " + ", ".join(f"{k}={v}" for k, v in rest.items()))
    images = f"  (+{len(req.image_ids)} image(s))" if req.image_ids else ""
    click.echo(f"  you: {req.text}{images}")
    text = "".join(p.text for p in turn.parts if isinstance(p, TextPart))
    click.echo(f"  seedx: {_clip(text, 300)}")
    for part in turn.parts:
        if getattr(part, "type", None) == "image" and part.role != "input":
            click.echo(f"  image: {describe_image(part)} -> {store.image_path(part.image_id)}")
    for action in turn.actions:
        click.echo(f"  action: {action.skill}.{action.action} v{action.version}")
    for error in turn.errors:
        click.echo(f"  error ({error.source}): {error.message}")


def _request_options(req: Any) -> dict[str, Any]:
    """What the turn set: the request's options (a `TurnOptions`, or the dict older records
    keep) plus its flags, without the unset ones."""
    options = getattr(req, "options", None) or {}
    if hasattr(options, "model_dump"):
        options = options.model_dump(exclude_defaults=True)
    found = {k: v for k, v in dict(options).items() if v not in (None, False)}
    for flag in ("force_image", "edit", "skill", "variant"):
        if getattr(req, flag, None):
            found.setdefault(flag, getattr(req, flag))
    return found


@sessions.command("export")
@click.argument("session_id", metavar="ID")
@click.argument("dest", type=click.Path(path_type=Path), metavar="DEST")
@store_option
def export(session_id: str, dest: Path, store: Path | None) -> int:
    """Write DEST/transcript.json and DEST/images/."""
    with open_store(store, create=False) as opened:
        session_id = resolve_session(opened, session_id)
        export_session(opened, session_id, dest)
    click.echo(f"exported session {session_id} to {dest}/ (transcript.json, images/)")
    return EXIT_OK


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"
