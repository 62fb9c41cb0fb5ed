"""``seedx run SCRIPT.yaml --out DIR`` and ``seedx smoke --out DIR``: a scripted session.

The script is checked first (`load_script`, then the skills it names against the installed
ones), then the model loads (and the variants it names are checked against the model's), then
every turn runs whatever happens to the one before it: a turn that fails is recorded in the
transcript with its error, and the run still did its job (exit status 0). ``smoke`` is ``run``
on a built-in script for the untrained tiny stack (every code path, no file needed); the README
demo is examples/demo.yaml.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..types import ErrorEvent, Notice, TurnDone
from ..versions import VERSION_REF
from .errors import EXIT_OK, CliError
from .model import load_runtime, model_options, print_banner
from .script import Script, ScriptTurn, load_script, parse_script
from .synthetic import parse_synthetic, synthetic_image
from .transcript import turn_entry, write_transcript
from .turn_printer import TurnPrinter

if TYPE_CHECKING:
    from ..session import Session
    from ..store import SessionStore

# ``seedx smoke``: every code path once on the untrained tiny stack, with no file from the
# repository; examples/smoke.yaml is this script as YAML (a test keeps the two equal). The tiny
# model would never draw on its own, hence force_image on the edit turn too. The README demo is
# examples/demo.yaml, on the Nano.
SMOKE_SCRIPT: dict[str, Any] = {
    "title": "smoke: image in, question, image out, edit, grounding",
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
OUT_ENTRIES = {"transcript.json", "index.html", "images", "artifacts", "store"}


@click.command("run")
@click.argument("script", type=click.Path(path_type=Path), metavar="SCRIPT.yaml")
@click.option("--out", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="where the transcript, images, artifacts and store go")
@model_options
def run(script: Path, out: Path, model: str | None, placement: str | None) -> int:
    """Run a scripted multi-turn session: SCRIPT.yaml (format: docs/cli.md) -> DIR/transcript.json,
    DIR/images/, DIR/artifacts/ and DIR/store/."""
    checked = load_script(script)
    return run_script(checked, script.parent, out, source=str(script), model=model,
                      placement=placement)


@click.command("smoke")
@click.option("--out", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="where the transcript, images, artifacts and store go")
@model_options
def smoke(out: Path, model: str | None, placement: str | None) -> int:
    """Run the built-in smoke script (examples/smoke.yaml) on the untrained tiny stack: an image
    and a question, a forced image, an edit of it, a grounding question. Writes what `run`
    writes."""
    script = parse_script(SMOKE_SCRIPT, "the built-in smoke script")
    return run_script(script, Path.cwd(), out, source="built-in smoke script (examples/smoke.yaml)",
                      model=model, placement=placement)


def run_script(script: Script, base: Path, out: Path, *, source: str, model: str | None = None,
               placement: str | None = None) -> int:
    """Run ``script`` (image paths relative to ``base``) and write its results under ``out``."""
    from ..store import SessionStore

    check_skills(script, source)
    prepare_out(out)
    runtime = load_runtime(model or script.model, placement)
    check_variants(script, source, runtime.variants.names())
    print_banner(runtime, sys.stderr)
    store = SessionStore(out / "store")
    try:
        session = runtime.open_session(store=store, variant=script.variant,
                                       default_skill=script.skill, title=script.title or source,
                                       artifact_dir=out / "artifacts")
    except KeyError as exc:
        store.close()
        raise CliError(f"{source}: {exc.args[0] if exc.args else exc}") from None
    entries: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for n, turn in enumerate(script.turns):
            click.echo(f"\n--- turn {n + 1}/{len(script.turns)}: {turn.text!r}"
                       + (f" (+{len(turn.image_specs)} image(s))" if turn.images else ""))
            entries.extend(run_turn(session, store, script, turn, n, base, out))
    finally:
        path = write_transcript(out, script=script, source=source, runtime=runtime,
                                session=session, store=store, entries=entries,
                                seconds=time.monotonic() - started)
        store.close()
    failed = sum(1 for e in entries if e["errors"])
    images = len(list((out / "images").glob("*.png")))
    click.echo(f"\nwrote {path}: {len(entries)} turns ({failed} with errors), {images} images in "
               f"{out / 'images'}, skill artifacts in {out / 'artifacts'}, session {session.id} "
               f"in {out / 'store'}")
    return EXIT_OK


def run_turn(session: "Session", store: "SessionStore", script: Script, turn: ScriptTurn, n: int,
             base: Path, out: Path) -> list[dict[str, Any]]:
    """One script turn (a ``revert_to`` first): its transcript entries, one per recorded turn
    (``steps: N`` records N). Whatever goes wrong is recorded in them."""
    printer = TurnPrinter(sys.stdout, sys.stderr, image_path=store.image_path)
    options = script.turn_options(turn)
    errors: list[dict[str, Any]] = []
    notices: list[str] = []
    started = time.monotonic()

    def entry(done: TurnDone | None, before: int) -> dict[str, Any]:
        stored = session.history[before] if len(session.history) > before else None
        request = {"text": turn.text, "images": list(turn.image_specs),
                   "revert_to": turn.revert_to, **options.model_dump(mode="json")}
        made = turn_entry(script_index=n, request=request, done=done, stored=stored,
                          errors=list(errors), notices=list(notices), out=out,
                          seconds=time.monotonic() - started)
        errors.clear()
        notices.clear()
        return made

    if turn.revert_to is not None:
        before = len(session.history)
        try:
            version = session.revert(turn.revert_to)
        except LookupError as exc:
            printer.line(f"error (input): {exc}", sys.stderr)
            errors.append({"type": "error", "source": "input", "message": str(exc)})
            return [entry(None, before)]
        printer.line(f"reverted to version {version.number}: the working image is "
                     f"{version.image_id}", sys.stdout)
        if not turn.text and not turn.images:
            return [entry(TurnDone(turn_index=session.history[-1].index, parts=(version.image,)),
                          before)]
    entries: list[dict[str, Any]] = []
    before = len(session.history)
    printer.begin("seedx> ")
    try:
        for event in session.turn(turn.text, turn_images(turn, base), options=options):
            printer(event)
            if isinstance(event, ErrorEvent):
                errors.append(event.model_dump(mode="json"))
            elif isinstance(event, Notice):
                notices.append(event.message)
            elif isinstance(event, TurnDone):  # one per step
                entries.append(entry(event, before + len(entries)))
    except Exception as exc:  # the session should not raise; if it does, record and go on
        printer.line(f"error (cli): {type(exc).__name__}: {exc}", sys.stderr)
        errors.append({"type": "error", "source": "cli", "message": f"{type(exc).__name__}: {exc}"})
    if errors or notices or not entries:  # what came after the last step, or a turn that broke
        if entries:
            entries[-1]["errors"] += errors
            entries[-1]["notices"] += notices
        else:
            entries.append(entry(None, before))
    return entries


def _named(script: Script, field: str) -> list[tuple[str, str]]:
    """``(where, name)`` for the script's ``field`` and each turn's, where they are set."""
    named = [(field, getattr(script, field))] + [
        (f"turns[{n}].{field}", getattr(turn, field)) for n, turn in enumerate(script.turns)]
    return [(where, name) for where, name in named if name is not None]


def check_skills(script: Script, source: str) -> None:
    """Every skill the script names is installed; checked before the model loads, since a
    scripted turn without its skill would only be noise."""
    from ..plugins import pm
    from ..skill_host import SkillHost
    from ..skills import SkillRegistrationError

    named = _named(script, "skill")
    if not named:
        return
    try:
        installed = SkillHost(pm).skills
    except SkillRegistrationError as exc:
        raise CliError(f"{source}: the installed skills cannot be listed: {exc}") from None
    for where, name in named:
        if name not in installed:
            raise CliError(f"{source}: {where}: unknown skill {name!r}; installed: "
                           f"{', '.join(installed) or 'none'} (seedx plugins lists them)")


def check_variants(script: Script, source: str, known: list[str]) -> None:
    """Every variant the script names is one the loaded model has."""
    for where, name in _named(script, "variant"):
        if name not in known:
            raise CliError(f"{source}: {where}: unknown variant {name!r}; this model has: "
                           f"{', '.join(known)}")


def turn_images(turn: ScriptTurn, base: Path) -> list[Any]:
    """The turn's pictures: synthetic ones made, files as paths under ``base``."""
    images: list[Any] = []
    for spec in turn.image_specs:
        if VERSION_REF.match(spec.strip()):
            images.append(spec.strip())  # the session looks it up
            continue
        size = parse_synthetic(spec)
        images.append(synthetic_image(*size) if size else base / spec)
    return images


def prepare_out(out: Path) -> None:
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
        for name in ("transcript.json", "index.html"):
            (out / name).unlink(missing_ok=True)
        for name in ("images", "artifacts"):
            shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
