"""``DIR/transcript.json``: what ``seedx run`` leaves, one self-contained record of the run.

One entry per script turn, built from the turn's events and its stored record, and the
session's pictures under ``DIR/images/`` through `SessionStore.export` (which verifies every
file). The layout is documented in docs/cli.md; `TRANSCRIPT_SCHEMA_VERSION` changes with it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core_models.files import write_json

from .. import __version__
from ..types import ImagePart, TextPart, TurnDone
from ..versions import working_version
from .report_page import write_report_page

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..session import Session
    from ..store import SessionStore
    from .script import Script

TRANSCRIPT_SCHEMA_VERSION = 3
"""3: ``versions`` (the session's pictures as numbered versions with parents) and the turns'
``request.revert_to``. 2: ``notice`` (was ``untrained_notice``), ``request`` carries every turn option, picture
provenance in the names of the turn options (types schema 2). 1: the first layout."""


def turn_entry(*, script_index: int, request: dict[str, Any],
               done: TurnDone | None, stored: Any, errors: list[dict[str, Any]],
               notices: list[str], out: Path, seconds: float) -> dict[str, Any]:
    """The transcript entry of one script turn. ``stored`` is its `TurnRecord`, or None when it
    never reached the session's history."""
    parts = list(done.parts) if done else []
    return {
        "script_index": script_index,
        "request": request,
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
        "model_images": list(stored.context.image_ids)
        if stored is not None and stored.context else [],
        "artifacts": sorted(_relative(p, out) for p in (done.artifacts if done else ())),
        "seconds": round(seconds, 3),
    }


def write_transcript(out: Path, *, script: "Script", source: str, runtime: "Runtime",
                     session: "Session", store: "SessionStore", entries: list[dict[str, Any]],
                     seconds: float) -> Path:
    """Copy the session's pictures to ``out/images/`` and write ``out/transcript.json``."""
    from ..store import RECORD_SCHEMA_VERSION, STORE_SCHEMA_VERSION
    from ..types import SCHEMA_VERSION

    collect_images(store, session.id, out)
    transcript = {
        "schema_version": TRANSCRIPT_SCHEMA_VERSION,
        "record_schema_version": RECORD_SCHEMA_VERSION,
        "store_schema_version": STORE_SCHEMA_VERSION,
        "types_schema_version": SCHEMA_VERSION,
        "seedx_agent_version": __version__,
        "script": {"source": source, **script.model_dump(mode="json")},
        "complete": {e["script_index"] for e in entries} == set(range(len(script.turns))),
        "notice": runtime.notice,
        "runtime": runtime.describe(),
        "session": session.record.model_dump(mode="json"),
        "store": "store",
        "seconds": round(seconds, 3),
        "turns": entries,
        "versions": [{"number": v.number, "image_id": v.image_id, "parent": v.parent,
                      "turn_index": v.turn_index, "role": v.image.role,
                      "file": f"images/{v.image_id}.png"} for v in session.versions()],
        "working_version": (working.number if (working := working_version(session.history))
                            else None),
    }
    path = out / "transcript.json"
    write_json(path, transcript)
    write_report_page(out, transcript)
    return path


def collect_images(store: "SessionStore", session_id: str, out: Path) -> None:
    """Every picture of the session as ``out/images/<id>.png``, through ``store.export``."""
    staging = out / f".export-{session_id}"
    shutil.rmtree(staging, ignore_errors=True)
    store.export(session_id, staging)
    (out / "images").mkdir(exist_ok=True)
    for file in (staging / "images").iterdir():
        shutil.move(file, out / "images" / file.name)  # verified by the export; a move
    shutil.rmtree(staging)


def _relative(path: str, out: Path) -> str:
    """A skill's file relative to ``out`` when it is under it (it is, with ``seedx run``)."""
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)
