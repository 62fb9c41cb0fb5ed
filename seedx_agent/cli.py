"""The ``seedx`` command line: chat, scripted sessions, plugins and the session store.

    seedx chat     [--model tiny|PATH] [--placement PLAN] [--store DIR] [--session ID] [--skill S]
    seedx run      SCRIPT.yaml --out DIR [--model …] [--placement …]
    seedx smoke    --out DIR [--model …] [--placement …]
    seedx plugins  [--json]
    seedx sessions list | show ID | export ID DEST   [--store DIR]
    seedx eval     nano [--json] [--n 200] [--smoke] [--model nano|PATH]

Plugins add commands through the ``register_commands(cli)`` hook. Every command is documented in
docs/cli.md, with the script format of ``seedx run``.

Starting the CLI must be cheap: ``seedx --help``, ``seedx plugins`` and ``seedx sessions`` never
import torch. The runtime (and with it torch) is imported inside the commands that load a model.

Exit status: 0 when the command did its job (a scripted session whose turns failed did its job:
the failures are in the transcript), 2 for a bad invocation or a broken script, 1 for anything
unexpected.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import __version__
from .presets import DEFAULT_PRESET, TINY_PRESET
from .progress import DenoiseBars, status
from .types import (ActionEvent, BoxFound, DenoiseStep, ErrorEvent, Event, ImageDone, ImagePart,
                    ImageStarted, Notice, TextDelta, TextPart, TurnDone)

if TYPE_CHECKING:
    from PIL import Image

    from .runtime import Runtime
    from .session import Session
    from .store import SessionStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
TRANSCRIPT_SCHEMA_VERSION = 1
"""Version of the ``transcript.json`` that ``seedx run`` writes (its layout is in docs/cli.md)."""

DEFAULT_MODEL = DEFAULT_PRESET  # "nano" once the shipped SEED-X Nano is trained, else "tiny"

# The README demo, also run by ``seedx smoke``; examples/demo.yaml is this script as YAML (a test
# keeps the two equal). The tiny model is untrained and would never draw on its own, hence
# force_image on the edit turn too.
DEMO_SCRIPT: dict[str, Any] = {
    "title": "demo: image in, question, image out, edit, grounding",
    "model": "tiny",
    "seed": 42,
    "turns": [
        {"text": "What is in this picture?", "images": ["synthetic:320x240"],
         "max_new_tokens": 24},
        {"text": "Draw a red barn under a blue sky.", "force_image": True, "max_new_tokens": 72},
        {"text": "Make the sky purple.", "edit": True, "force_image": True, "max_new_tokens": 72},
        {"text": "Where is the barn?", "skill": "grounding", "max_new_tokens": 24},
    ],
}


class CliError(Exception):
    """A bad invocation or a broken script: printed as ``seedx: error: …``, exit status 2."""


# --- entry point --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Run ``seedx`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _quiet_untrained_log()
    try:
        result = args.func(args)
    except CliError as exc:
        print(f"seedx: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("seedx: interrupted", file=sys.stderr)
        return 130
    return EXIT_OK if result is None else int(result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedx",
        description="SEED-X as an agent: multi-turn sessions with images in and out, and skills. "
                    + _default_model_help(),
        epilog="Docs: docs/cli.md. Exit status: 0 ok, 2 bad invocation or broken script, 1 other.")
    parser.add_argument("--version", action="version", version=f"seedx-agent {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    model = argparse.ArgumentParser(add_help=False)
    model.add_argument("--model", default=None, metavar="nano|tiny|PATH",
                       help=f"preset or release folder (default: {DEFAULT_MODEL}"
                            + (", untrained)" if DEFAULT_MODEL == TINY_PRESET else ")"))
    model.add_argument("--placement", default=None, metavar="PLAN",
                       help="cpu (default), cuda[:N], split:DEV,DEV, offload[:DEV] or auto")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--store", type=Path, default=None, metavar="DIR",
                       help=f"session store (default: {_store_help()})")

    chat = commands.add_parser("chat", parents=[model, store], help="talk to SEED-X in a REPL",
                               description="A REPL: each line is a user turn; /help lists the "
                                           "commands (/image, /draw, /edit, /skill, /save, /quit).")
    chat.add_argument("--session", metavar="ID",
                      help="resume a stored session (an id prefix will do)")
    chat.add_argument("--skill", metavar="NAME", help="skill for every turn (e.g. grounding)")
    chat.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                      help="reply length limit (default: the variant's)")
    chat.set_defaults(func=cmd_chat)

    run = commands.add_parser("run", parents=[model], help="run a scripted multi-turn session",
                              description="Run SCRIPT.yaml (format: docs/cli.md) and write "
                                          "DIR/transcript.json, DIR/images/, DIR/artifacts/ and "
                                          "DIR/store/.")
    run.add_argument("script", type=Path, metavar="SCRIPT.yaml")
    run.add_argument("--out", type=Path, required=True, metavar="DIR")
    run.set_defaults(func=cmd_run)

    smoke = commands.add_parser("smoke", parents=[model],
                                help="build the stack and run the built-in demo script",
                                description="The README demo (examples/demo.yaml, built in): an "
                                            "image and a question, a forced image, an edit of "
                                            "it, a grounding question. Writes what `run` writes.")
    smoke.add_argument("--out", type=Path, required=True, metavar="DIR")
    smoke.set_defaults(func=cmd_smoke)

    plugins = commands.add_parser("plugins", help="list plugins, their hooks and the skills")
    plugins.add_argument("--json", action="store_true", help="print JSON")
    plugins.set_defaults(func=cmd_plugins)

    sessions = commands.add_parser("sessions", help="list, show and export stored sessions")
    sessions.set_defaults(func=lambda args: sessions.print_help() or EXIT_USAGE)
    actions = sessions.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", parents=[store], help="every session, oldest first")
    listing.set_defaults(func=cmd_sessions_list)
    show = actions.add_parser("show", parents=[store], help="one session, turn by turn")
    show.add_argument("session", metavar="ID", help="session id (or a unique prefix)")
    show.add_argument("--json", action="store_true", help="print the stored records as JSON")
    show.set_defaults(func=cmd_sessions_show)
    export = actions.add_parser("export", parents=[store],
                                help="write DEST/transcript.json and DEST/images/")
    export.add_argument("session", metavar="ID", help="session id (or a unique prefix)")
    export.add_argument("dest", type=Path, metavar="DEST")
    export.set_defaults(func=cmd_sessions_export)

    convert = commands.add_parser(
        "convert", help="convert a pickled checkpoint (.bin/.pt, sharded or not) to safetensors",
        description="One-time conversion of a released checkpoint file or folder (LLM shards + "
                    "index, agent, de-tokenizer, Qwen ViT) to safetensors, streamed shard by shard "
                    "and crash-safe. Qwen-VL-Chat shards: add --qwen-visual to keep only "
                    "transformer.visual.* (prefix stripped).")
    convert.add_argument("src", type=Path, metavar="SRC")
    convert.add_argument("dst", type=Path, metavar="DST")
    convert.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                         help="cast while converting (the released LLM is fp32)")
    convert.add_argument("--max-shard-size", default="5GB", metavar="SIZE")
    convert.add_argument("--qwen-visual", action="store_true",
                         help="extract the ViT from Qwen-VL-Chat shards")
    convert.set_defaults(func=cmd_convert)

    evaluate = commands.add_parser(
        "eval", help="score a model on held-out scenes (SEED-X Nano)",
        description="Score SEED-X Nano on held-out scenes of its world through the agent "
                    "(Runtime + Session.turn, canonical requests), with a model-free analyser: "
                    "grounding mIoU, caption attributes, counting, text-to-image attributes, "
                    "edits (accuracy, PSNR outside the edited object) and try-on. --json prints "
                    "one JSON object; progress and notes go to stderr.")
    evaluate.add_argument("suite", choices=["nano"], help="what to evaluate")
    evaluate.add_argument("--model", default=None, metavar="nano|PATH",
                          help="the Nano preset (default) or an exported Nano folder")
    evaluate.add_argument("--n", type=int, default=200, metavar="N",
                          help="held-out scenes per metric (default 200)")
    evaluate.add_argument("--smoke", action="store_true",
                          help="a handful of scenes per metric (what CI runs)")
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON object with the seven metrics")
    evaluate.add_argument("--threads", type=int, default=1, metavar="N",
                          help="torch threads (default 1: the Nano's matrices are small, one "
                               "thread is fastest and leaves the other cores free)")
    evaluate.set_defaults(func=cmd_eval)

    from .plugins import pm
    try:
        pm.hook.register_commands(cli=commands)
    except Exception as exc:  # one broken plugin must not take the whole CLI down
        print(f"seedx: a plugin failed to add its commands: {exc!r}", file=sys.stderr)
    return parser


# --- chat ----------------------------------------------------------------------------------------

CHAT_HELP = """\
  TEXT           send a turn
  /image PATH    attach an image to the next turn (repeat for several)
  /draw          toggle: the next turn must answer with an image
  /edit          toggle: the next turn edits its image (or the latest one)
  /skill [NAME]  use skill NAME for the following turns (no name: none)
  /save [DIR]    export the session (transcript + images) to DIR
  /help          this list
  /quit          leave (Ctrl-D too); Ctrl-C stops a running turn"""


class _Pending:
    """What the next turn carries besides its text; reset after every turn."""

    def __init__(self) -> None:
        self.images: list[Image.Image] = []
        self.names: list[str] = []
        self.force_image = False
        self.edit = False


def cmd_chat(args: argparse.Namespace) -> int:
    store = _open_store(args.store, create=True)
    runtime = load_runtime(args.model, args.placement)
    _banner(runtime, sys.stdout)
    session_id = _resolve_session(store, args.session) if args.session else None
    session = runtime.open_session(store=store, session_id=session_id, title="chat",
                                   max_new_tokens=args.max_new_tokens)
    repl = ChatRepl(session, store)
    if args.skill:
        repl.choose_skill(args.skill)
    verb = "resumed" if session_id else "new"
    print(f"{verb} session {session.id} in {store.root} ({len(session.history)} turns); "
          "/help lists the commands", flush=True)
    return repl.loop()


class ChatRepl:
    def __init__(self, session: "Session", store: "SessionStore", stdin: TextIO | None = None,
                 stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.session = session
        self.store = store
        self.stdin = stdin or sys.stdin
        self.out = stdout or sys.stdout
        self.err = stderr or sys.stderr
        self.interactive = self.stdin is sys.stdin and self.stdin.isatty()
        self.pending = _Pending()
        self.skill: str | None = None

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
            except CliError as exc:
                print(f"error: {exc}", file=self.err, flush=True)
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
        name, _, arg = line.partition(" ")
        arg = arg.strip().strip("\"'")
        if name in ("/quit", "/exit", "/q"):
            return "quit"
        if name == "/help":
            print(CHAT_HELP, file=self.out)
        elif name == "/image":
            self._attach(arg)
        elif name == "/draw":
            self.pending.force_image = not self.pending.force_image
            print(f"next turn draws an image: {_on_off(self.pending.force_image)}", file=self.out)
        elif name == "/edit":
            self.pending.edit = not self.pending.edit
            print(f"next turn is an edit: {_on_off(self.pending.edit)}", file=self.out)
            untrained = self.session.runtime.untrained
            if self.pending.edit and untrained and not self.pending.force_image:
                print("(the untrained model draws only when forced: add /draw)", file=self.out)
        elif name == "/skill":
            self.choose_skill(arg)
        elif name == "/save":
            dest = Path(arg or f"seedx-session-{self.session.id[:8]}")
            _export(self.store, self.session.id, dest)
            print(f"exported session {self.session.id} to {dest}/ (it is also kept in "
                  f"{self.store.root})", file=self.out)
        else:
            raise CliError(f"unknown command {name}; /help lists them")
        self.out.flush()
        return None

    def _attach(self, path: str) -> None:
        from core_models.image_io import ImageInputError, load_image

        if not path:
            raise CliError("usage: /image PATH")
        try:
            image = load_image(os.path.expanduser(path))
        except ImageInputError as exc:
            raise CliError(f"not attached: {exc}") from None
        self.pending.images.append(image)
        self.pending.names.append(path)
        print(f"attached {path} ({image.width}x{image.height}) to the next turn", file=self.out)

    def choose_skill(self, name: str) -> None:
        if name in ("", "none", "off"):
            self.skill = None
            print("no skill for the following turns", file=self.out)
            return
        known = self.session.runtime.skill_host.skills
        if name not in known:
            raise CliError(f"no skill named {name!r}; installed: {', '.join(known) or 'none'}")
        self.skill = name
        print(f"skill for the following turns: {name}", file=self.out)

    def turn(self, text: str) -> None:
        pending, self.pending = self.pending, _Pending()
        cancel = threading.Event()
        printer = TurnPrinter(self.out, self.err, image_path=self.store.image_path)
        before = len(self.session.history)
        printer.begin("seedx> ")
        with _CtrlCCancels(cancel):
            for event in self.session.turn(text, pending.images, skill=self.skill,
                                           force_image=pending.force_image, edit=pending.edit,
                                           cancel=cancel):
                printer(event)
        if len(self.session.history) > before:
            folder = self.session._artifacts(before)
            if folder.exists():
                print(f"[artifacts: {folder}]", file=self.out, flush=True)


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


# --- printing a turn -----------------------------------------------------------------------------

class TurnPrinter:
    """Shows a turn's events as they come: text streamed, one line per image, box, action,
    notice or error (errors on stderr), progress bars for denoising."""

    def __init__(self, out: TextIO, err: TextIO, image_path: Callable[[str], Path]):
        self.out, self.err = out, err
        self.image_path = image_path
        self.bars = DenoiseBars(err)
        self._midline = self._after_label = False

    def begin(self, label: str) -> None:
        self.out.write(label)
        self.out.flush()
        self._midline = True
        self._after_label = True  # a first line may follow the label on the same line

    def end_line(self) -> None:
        if self._midline:
            self.out.write("\n")
            self.out.flush()
        self._midline = self._after_label = False

    def line(self, text: str, stream: TextIO | None = None) -> None:
        stream = stream or self.out
        if not (self._after_label and stream is self.out):
            self.end_line()
        self._midline = self._after_label = False
        stream.write(text + "\n")
        stream.flush()

    def __call__(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.out.write(event.text)
            self.out.flush()
            self._midline = not event.text.endswith("\n")
            self._after_label = False
        elif isinstance(event, ImageStarted):
            self.line(f"[image {event.index} started]")
        elif isinstance(event, DenoiseStep):
            if self.bars.animate:
                self.end_line()  # the bar needs a line of its own
            self.bars.step(event)
        elif isinstance(event, ImageDone):
            self.bars.done(event.index)
            self.line(f"[image {event.index}: {_describe_image(event.image)} -> "
                      f"{self.image_path(event.image.image_id)}]")
        elif isinstance(event, BoxFound):
            box = event.box
            self.line(f"[box {box.phrase or '(no phrase)'!r}: centre/size bins {list(box.bins)}]")
        elif isinstance(event, ActionEvent):
            action = event.action
            self.line(f"[action {action.skill}.{action.action} v{action.version}]")
        elif isinstance(event, Notice):
            self.line(f"note: {event.message}", self.err)
        elif isinstance(event, ErrorEvent):
            self.line(f"error ({event.source}): {event.message}", self.err)
        elif isinstance(event, TurnDone):
            self.bars.close()
            self.line(f"[turn {event.turn_index}: {event.finish_reason}]")


def _describe_image(image: ImagePart) -> str:
    text = f"{image.role} {image.width}x{image.height} {image.image_id[:12]}"
    if image.provenance is not None and image.provenance.parent_image:
        text += f", edit of {image.provenance.parent_image[:12]}"
    return text


# --- run and smoke ------------------------------------------------------------------------------

class ScriptTurn(BaseModel):
    """One turn of a ``seedx run`` script (docs/cli.md)."""

    model_config = ConfigDict(extra="forbid")
    text: str = ""
    images: list[str] = Field(default_factory=list)
    force_image: bool = False
    edit: bool = False
    skill: str | None = None
    seed: int | None = None
    max_new_tokens: int | None = Field(default=None, gt=0)
    num_inference_steps: int | None = Field(default=None, gt=0)


class Script(BaseModel):
    """A ``seedx run`` script: session settings and its turns, in order."""

    model_config = ConfigDict(extra="forbid")
    title: str = ""
    model: str | None = None
    variant: str | None = None
    skill: str | None = None
    seed: int | None = None
    turns: list[ScriptTurn] = Field(min_length=1)


SYNTHETIC = re.compile(r"^synthetic:(\d+)x(\d+)$")
OUT_ENTRIES = {"transcript.json", "images", "artifacts", "store"}


def cmd_run(args: argparse.Namespace) -> int:
    script = load_script(args.script)
    return run_script(script, args.script.parent, args.out, source=str(args.script),
                      model=args.model, placement=args.placement)


def cmd_smoke(args: argparse.Namespace) -> int:
    script = Script.model_validate(DEMO_SCRIPT)
    return run_script(script, Path.cwd(), args.out, source="built-in demo (examples/demo.yaml)",
                      model=args.model, placement=args.placement)


def load_script(path: Path) -> Script:
    """Read and check a script; every problem is a ``CliError`` naming the file and the field."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"script not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read script {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CliError(f"{path}: a script is a mapping with a 'turns' list (docs/cli.md)")
    try:
        script = Script.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {_loc(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CliError(f"{path} is not a valid seedx script:\n{problems}") from None
    for t, turn in enumerate(script.turns):
        for i, spec in enumerate(turn.images):
            where = f"{path}: turns[{t}].images[{i}]"
            match = SYNTHETIC.match(spec)
            if match and not all(1 <= int(n) <= 4096 for n in match.groups()):
                raise CliError(f"{where}: synthetic sizes are 1..4096, got {spec!r}")
            if not match and not (path.parent / spec).is_file():
                raise CliError(f"{where}: image file not found: {path.parent / spec}")
    return script


def _loc(loc: tuple) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or "(script)"


def synthetic_image(width: int, height: int) -> "Image.Image":
    """A deterministic test picture: smooth colour ramps and a diagonal pattern (no randomness,
    so a script gives the same image ids on every machine)."""
    import numpy as np
    from PIL import Image

    x = np.arange(width, dtype=np.float64)
    y = np.arange(height, dtype=np.float64)
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = np.round(127.5 + 127.5 * np.sin(2 * np.pi * x / width * 3.0 + 0.3))[None, :]
    rgb[..., 1] = np.round(127.5 + 127.5 * np.cos(2 * np.pi * y / height * 2.0))[:, None]
    rgb[..., 2] = (np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13) % 256
    return Image.fromarray(rgb)


def _turn_images(turn: ScriptTurn, base: Path) -> list[Any]:
    images: list[Any] = []
    for spec in turn.images:
        match = SYNTHETIC.match(spec)
        images.append(synthetic_image(*map(int, match.groups())) if match else base / spec)
    return images


def _prepare_out(out: Path) -> None:
    """``out`` must be new, empty, or a previous run's folder (its transcript, images and
    artifacts are replaced; its store keeps every run's session)."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file")
    if out.exists():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUT_ENTRIES
                         and not p.name.startswith(".export-"))
        if foreign:
            listed = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise CliError(f"--out {out} holds files that no seedx run wrote ({listed}); "
                           "choose an empty folder")
        (out / "transcript.json").unlink(missing_ok=True)
        for name in ("images", "artifacts"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def run_script(script: Script, base: Path, out: Path, *, source: str, model: str | None = None,
               placement: str | None = None) -> int:
    """Run ``script`` (image paths relative to ``base``) and write its results under ``out``."""
    from .store import RECORD_SCHEMA_VERSION, STORE_SCHEMA_VERSION, SessionStore
    from .types import SCHEMA_VERSION

    _prepare_out(out)
    runtime = load_runtime(model or script.model, placement)
    _banner(runtime, sys.stderr)
    store = SessionStore(out / "store")
    try:
        session = runtime.open_session(store=store, variant=script.variant,
                                       default_skill=script.skill,
                                       title=script.title or source, artifact_dir=out / "artifacts")
    except KeyError as exc:
        raise CliError(f"{source}: {exc.args[0] if exc.args else exc}") from None
    entries = []
    started = time.monotonic()
    try:
        for n, turn in enumerate(script.turns):
            print(f"\n--- turn {n + 1}/{len(script.turns)}: {turn.text!r}"
                  + (f" (+{len(turn.images)} image(s))" if turn.images else ""), flush=True)
            entries.append(_run_turn(session, store, turn, n, base, out, script.seed))
    finally:
        _collect_images(store, session.id, out)
        transcript = {
            "schema_version": TRANSCRIPT_SCHEMA_VERSION,
            "record_schema_version": RECORD_SCHEMA_VERSION,
            "store_schema_version": STORE_SCHEMA_VERSION,
            "types_schema_version": SCHEMA_VERSION,
            "seedx_agent_version": __version__,
            "script": {"source": source, **script.model_dump(mode="json")},
            "complete": len(entries) == len(script.turns),
            "untrained_notice": _untrained_notice(runtime),
            "runtime": runtime.describe(),
            "session": session.record.model_dump(mode="json"),
            "store": "store",
            "seconds": round(time.monotonic() - started, 3),
            "turns": entries,
        }
        _write_json(out / "transcript.json", transcript)
        store.close()
    failed = sum(1 for e in entries if e["errors"])
    images = len(list((out / "images").glob("*.png")))
    print(f"\nwrote {out / 'transcript.json'}: {len(entries)} turns ({failed} with errors), "
          f"{images} images in {out / 'images'}, skill artifacts in {out / 'artifacts'}, "
          f"session {session.id} in {out / 'store'}")
    return EXIT_OK


def _run_turn(session: "Session", store: "SessionStore", turn: ScriptTurn, n: int, base: Path,
              out: Path, default_seed: int | None) -> dict[str, Any]:
    """One script turn; whatever goes wrong is recorded in the returned transcript entry."""
    printer = TurnPrinter(sys.stdout, sys.stderr, image_path=store.image_path)
    before = len(session.history)
    errors: list[dict[str, Any]] = []
    notices: list[str] = []
    done: TurnDone | None = None
    started = time.monotonic()
    printer.begin("seedx> ")
    try:
        events = session.turn(turn.text, _turn_images(turn, base), skill=turn.skill,
                              force_image=turn.force_image, edit=turn.edit,
                              max_new_tokens=turn.max_new_tokens,
                              num_inference_steps=turn.num_inference_steps,
                              seed=turn.seed if turn.seed is not None else default_seed)
        for event in events:
            printer(event)
            if isinstance(event, ErrorEvent):
                errors.append(event.model_dump(mode="json"))
            elif isinstance(event, Notice):
                notices.append(event.message)
            elif isinstance(event, TurnDone):
                done = event
    except Exception as exc:  # the session should not raise; if it does, record and go on
        printer.line(f"error (cli): {type(exc).__name__}: {exc}", sys.stderr)
        errors.append({"type": "error", "source": "cli", "message": f"{type(exc).__name__}: {exc}"})
    stored = session.history[before] if len(session.history) > before else None
    parts = list(done.parts) if done else []
    artifacts: list[str] = []
    if stored is not None:
        folder = session._artifacts(stored.index)
        if folder.exists():
            artifacts = sorted(str(p.relative_to(out)) for p in folder.rglob("*") if p.is_file())
    return {
        "script_index": n,
        "request": turn.model_dump(mode="json"),
        "index": stored.index if stored is not None else None,
        "finish_reason": done.finish_reason if done else "error",
        "variant": stored.variant if stored is not None else None,
        "prompt_tokens": stored.prompt_tokens if stored is not None else 0,
        "reply_tokens": stored.reply_tokens if stored is not None else 0,
        "text": "".join(p.text for p in parts if isinstance(p, TextPart)),
        "parts": [p.model_dump(mode="json") for p in parts],
        "actions": [a.model_dump(mode="json") for a in (done.actions if done else ())],
        "errors": errors,
        "notices": notices,
        "images": [{"image_id": p.image_id, "role": p.role, "file": f"images/{p.image_id}.png"}
                   for p in parts if isinstance(p, ImagePart)],
        # what the model was shown: the turn's images, or the latest picture it acts on
        "model_images": list(stored.context.image_ids) if stored and stored.context else [],
        "artifacts": artifacts,
        "seconds": round(time.monotonic() - started, 3),
    }


def _collect_images(store: "SessionStore", session_id: str, out: Path) -> None:
    """Every picture of the session as ``out/images/<id>.png``, through ``store.export``."""
    staging = out / f".export-{session_id}"
    shutil.rmtree(staging, ignore_errors=True)
    store.export(session_id, staging)
    (out / "images").mkdir(exist_ok=True)
    for file in (staging / "images").iterdir():
        os.replace(file, out / "images" / file.name)
    shutil.rmtree(staging)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- plugins -------------------------------------------------------------------------------------

def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugins, pm
    from .skills import SkillHost

    plugins = get_plugins()
    skills = [{"name": s.name, "description": s.description, "consumes": sorted(s.consumes),
               "preferred_variant": s.preferred_variant, "deadline_s": s.deadline_s,
               "actions": sorted(s.action_types),
               "class": f"{type(s).__module__}.{type(s).__qualname__}"}
              for s in SkillHost(pm).skills.values()]
    if args.json:
        print(json.dumps({"plugins": plugins, "skills": skills}, indent=2))
        return EXIT_OK
    print("plugins:" if plugins else "plugins: none loaded (see SEEDX_LOAD_PLUGINS)")
    for p in plugins:
        origin = f"{p['package']} {p['version']}" if p["package"] else "registered in code"
        print(f"  {p['name']:<16} {origin:<24} hooks: {', '.join(p['hooks']) or '-'}")
    print("skills:" if skills else "skills: none")
    for s in skills:
        print(f"  {s['name']:<16} consumes {', '.join(s['consumes'])}; actions "
              f"{', '.join(s['actions']) or '-'}; prefers {s['preferred_variant'] or 'any variant'}"
              f"\n  {'':<16} {s['description']}")
    return EXIT_OK


# --- sessions ------------------------------------------------------------------------------------

def default_store_dir() -> Path:
    """``$SEEDX_HOME/sessions``, or ``~/.seedx/sessions`` when SEEDX_HOME is not set."""
    home = os.environ.get("SEEDX_HOME")
    return (Path(home) if home else Path.home() / ".seedx") / "sessions"


def _store_help() -> str:
    return "$SEEDX_HOME/sessions, else ~/.seedx/sessions"


def _open_store(path: Path | None, *, create: bool) -> "SessionStore":
    from .store import DB_NAME, SessionStore, StoreError

    root = path or default_store_dir()
    if not create and not (root / DB_NAME).exists():
        raise CliError(f"no session store at {root} (pass --store DIR; default: {_store_help()})")
    try:
        return SessionStore(root)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def _resolve_session(store: "SessionStore", prefix: str) -> str:
    ids = [s.id for s in store.list_sessions() if s.id.startswith(prefix.lower())]
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise CliError(f"no session {prefix!r} in {store.root} (seedx sessions list shows them)")
    raise CliError(f"{prefix!r} matches {len(ids)} sessions; give more of the id")


def cmd_sessions_list(args: argparse.Namespace) -> int:
    from .store import DB_NAME

    root = args.store or default_store_dir()
    if not (root / DB_NAME).exists():
        print(f"no sessions ({root} holds no store yet)")
        return EXIT_OK
    with _open_store(root, create=False) as store:
        sessions = store.list_sessions()
        if not sessions:
            print(f"no sessions in {root}")
        for s in sessions:
            turns = store.next_index(s.id)
            fork = f" fork of {s.parent.session_id[:8]}@{s.parent.turn_index}" if s.parent else ""
            count = f"{turns:>3} turn" + ("s" if turns != 1 else " ")
            print(f"{s.id}  {s.created_at:%Y-%m-%d %H:%M}  {count}  "
                  f"{s.metadata.get('model', '?')}  {s.title}{fork}")
    return EXIT_OK


def cmd_sessions_show(args: argparse.Namespace) -> int:
    with _open_store(args.store, create=False) as store:
        session_id = _resolve_session(store, args.session)
        record, turns = store.get_session(session_id), store.turns(session_id)
        if args.json:
            print(json.dumps({"session": record.model_dump(mode="json"),
                              "turns": [t.model_dump(mode="json") for t in turns]}, indent=2))
            return EXIT_OK
        print(f"session {record.id}  {record.title!r}  created {record.created_at:%Y-%m-%d %H:%M}")
        print(f"  model {record.metadata.get('model', '?')}, variant {record.variant or '-'}, "
              f"default skill {record.default_skill or '-'}")
        if record.parent:
            print(f"  fork of {record.parent.session_id} at turn {record.parent.turn_index}")
        for turn in turns:
            req = turn.request
            flags = "".join(f" [{f}]" for f, on in (("draw", req.force_image), ("edit", req.edit),
                                                    (f"skill {req.skill}", req.skill)) if on)
            print(f"\nturn {turn.index} ({turn.status}, {turn.finish_reason}, {turn.variant}, "
                  f"{turn.prompt_tokens}+{turn.reply_tokens} tokens){flags}")
            images = f"  (+{len(req.image_ids)} image(s))" if req.image_ids else ""
            print(f"  you: {req.text}{images}")
            text = "".join(p.text for p in turn.parts if isinstance(p, TextPart))
            print(f"  seedx: {_clip(text, 300)}")
            for part in turn.parts:
                if isinstance(part, ImagePart) and part.role != "input":
                    print(f"  image: {_describe_image(part)} -> {store.image_path(part.image_id)}")
            for action in turn.actions:
                print(f"  action: {action.skill}.{action.action} v{action.version}")
            for error in turn.errors:
                print(f"  error ({error.source}): {error.message}")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CliError("--n must be at least 1")
    import torch

    from core_models.nano.evaluate import run_cli

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return run_cli(args.model, n=args.n, smoke=args.smoke, as_json=args.json)
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from None


def cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from core_models import checkpoint as ckpt

    dtype = getattr(torch, args.dtype) if args.dtype else None
    key_map = ckpt.qwen_visual_key_map if args.qwen_visual else ckpt.identity_key_map
    try:
        out = ckpt.convert_to_safetensors(args.src, args.dst, dtype=dtype,
                                          max_shard_size=args.max_shard_size, key_map=key_map)
    except (ckpt.CheckpointError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    print(f"converted {args.src} -> {out}")
    return EXIT_OK


def cmd_sessions_export(args: argparse.Namespace) -> int:
    with _open_store(args.store, create=False) as store:
        session_id = _resolve_session(store, args.session)
        _export(store, session_id, args.dest)
    print(f"exported session {session_id} to {args.dest}/ (transcript.json, images/)")
    return EXIT_OK


def _export(store: "SessionStore", session_id: str, dest: Path) -> None:
    from .store import StoreError

    try:
        store.export(session_id, dest)
    except StoreError as exc:
        raise CliError(str(exc)) from None


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} chars)"


# --- the model -----------------------------------------------------------------------------------

_RUNTIMES: dict[tuple[str, str], "Runtime"] = {}
"""Runtimes loaded by this process; a runtime is shareable, so ``smoke`` then ``run`` in one
process (or a test calling ``main`` twice) loads the model once."""


def load_runtime(model: str | None, placement: str | None) -> "Runtime":
    """The runtime for ``model`` on ``placement``, loaded behind a status line."""
    from .placement import Placement

    model = model or DEFAULT_MODEL
    try:
        plan = Placement.parse(placement or "cpu")
    except ValueError as exc:
        raise CliError(f"--placement: {exc}") from None
    key = (model, repr(plan))
    if key not in _RUNTIMES:
        from .runtime import Runtime

        with status(f"loading model {model!r} ({placement or 'cpu'})"):
            try:
                _RUNTIMES[key] = Runtime.from_pretrained(model, placement=plan)
            except FileNotFoundError as exc:
                raise CliError(str(exc)) from None
    return _RUNTIMES[key]


def _default_model_help() -> str:
    if DEFAULT_MODEL == TINY_PRESET:
        return (f"The default model ({DEFAULT_MODEL!r}) is an UNTRAINED random-weight stack: its "
                "replies and pictures are noise; pass --model PATH for released weights.")
    return (f"The default model ({DEFAULT_MODEL!r}) is SEED-X Nano, a small SEED-X trained on a "
            "procedural world of shapes (docs/model_card_nano.md); pass --model PATH for "
            "released weights.")


def _untrained_notice(runtime: "Runtime") -> str | None:
    notice = getattr(runtime, "notice", None)
    if notice:
        return notice
    if not runtime.untrained:
        return None
    return (f"model {runtime.name!r} is an UNTRAINED random-weight SEED-X stack, the default until "
            "a trained small model exists: its replies and pictures are noise. It runs the real "
            "code paths offline; pass --model PATH to use the released weights.")


def _banner(runtime: "Runtime", stream: TextIO) -> None:
    notice = _untrained_notice(runtime)
    if notice:
        rule = "=" * 78
        print(f"{rule}\nNOTE: {notice}\n{rule}", file=stream, flush=True)


def _quiet_untrained_log() -> None:
    """The runtime (and the presets) log the untrained notice as a warning; the CLI prints it
    as its banner."""
    for name in ("seedx_agent.runtime", "seedx_agent.presets"):
        logger = logging.getLogger(name)
        if not any(getattr(f, "_seedx_cli", False) for f in logger.filters):
            def drop(record: logging.LogRecord) -> bool:
                return "UNTRAINED" not in record.getMessage()
            drop._seedx_cli = True  # type: ignore[attr-defined]
            logger.addFilter(drop)


if __name__ == "__main__":
    sys.exit(main())
