"""Local, crash-safe persistence of sessions: one SQLite file plus content-addressed images.

A session is a list of turns. Each turn is stored as one JSON row (a frozen pydantic record) so
that what a user saw can be reloaded exactly, including the actions of plugins that are not
installed any more (their payloads are plain dicts). Images never live in the database: they
are PNG files under ``images/<aa>/<sha256>.png`` named by the hash of their pixels, so a picture
used by many turns, or shared between a session and its forks, is stored once.

Crash safety rests on one ordering rule: an image file is written to a temporary name, fsynced
and renamed into place *before* the database row that references it is committed. A crash at
any point therefore leaves at worst an unreferenced image file, never a row that points at a
missing or half-written picture. The database itself runs in WAL mode with ``synchronous=FULL``,
and every write is one ``BEGIN IMMEDIATE`` transaction, so a turn is either fully there or not
at all, and two writers (threads or processes) cannot both claim the same turn index.

What the disk or SQLite refuses is a `StoreError` that names the file and the reason, never a
bare ``sqlite3`` or ``OSError``: a full disk, a write the file system refuses (read-only, no
permission), a database another connection holds locked past ``busy_timeout``, a database file
that is truncated or corrupt. A refused write leaves the store as it was before that write; a
damaged database file is reported, never rewritten.

Layout of ``root``::

    sessions.sqlite3          schema_meta, sessions, turns, images, turn_images
    images/ab/ab12…ef.png     one file per distinct picture

This module must stay importable without torch (the CLI lists sessions without loading a model).
"""

from __future__ import annotations

import io
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core_models.image_io import ImageInputError, content_hash, load_image, to_rgb
from core_models.files import atomic_write
from seedx_agent.pause_points import pause_point
from seedx_agent.types import Action, BoxPart, ErrorEvent, ImagePart, Notice, Part

__all__ = ["ForkPoint", "SessionNotFound", "SessionRecord", "SessionStore", "StoreError",
           "TurnRecord", "TurnRequest", "content_hash"]

RECORD_SCHEMA_VERSION = 2
"""Version of the JSON records below; bumped when a stored record would no longer validate.
2: turns keep their notices and artifact paths, a failed turn is stored (``status="failed"``),
and provenance uses the turn options' names (`seedx_agent.types.SCHEMA_VERSION`)."""

STORE_SCHEMA_VERSION = 2
"""Version of the store. ``MIGRATIONS[n]`` upgrades a store from ``n`` to ``n + 1``."""

DB_NAME = "sessions.sqlite3"
IMAGES_DIR = "images"
TRANSCRIPT_NAME = "transcript.json"

ImageId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class StoreError(RuntimeError):
    """Anything the store refuses or cannot do; the message says what and where."""


class SessionNotFound(StoreError):
    """The session id is not in this store (never created, or deleted)."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


# --- records ------------------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_version: int = RECORD_SCHEMA_VERSION


class TurnRequest(_Record):
    """What the user asked for in one turn, kept so the turn can be explained or re-run."""

    text: str = ""
    image_ids: tuple[ImageId, ...] = ()
    skill: str | None = None
    force_image: bool = False
    edit: bool = False
    variant: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    revert_to: int | None = Field(default=None, ge=1, description="a revert turn: the image "
                                  "version it made the working image again (versions.py)")


class ModelContext(_Record):
    """What the LLM read and wrote in a turn, so a resumed session rebuilds its KV cache exactly.

    ``in_context`` is False for turns that ran outside the conversation's cache (SEED-X-Edit turns
    run as their own single-turn prompt).
    """

    variant: str
    instruction: str
    image_ids: tuple[ImageId, ...] = ()
    grids: tuple[str, ...] = ()
    image_first: bool = True
    reply_ids: tuple[int, ...] = ()
    in_context: bool = True


class TurnRecord(_Record):
    """One finished (or abandoned) turn: the request and everything the model and skills made.

    Cancelled and failed turns are stored too, with their errors, so a crash report or a retry
    can see them; the agent never sends them to the model again (a failed turn has no
    ``context``) and ``rollback_turn`` removes them when the user retries.
    """

    session_id: str
    index: int = Field(ge=0)
    request: TurnRequest
    parts: tuple[Part, ...] = ()
    actions: tuple[Action, ...] = ()
    errors: tuple[ErrorEvent, ...] = ()
    notices: tuple[Notice, ...] = ()
    artifacts: tuple[str, ...] = ()  # files the turn's skills wrote
    finish_reason: Literal["eos", "max_new_tokens", "cancelled", "error"] = "eos"
    variant: str | None = None
    prompt_tokens: int = Field(default=0, ge=0)
    reply_tokens: int = Field(default=0, ge=0)
    created_at: datetime = Field(default_factory=_now)
    status: Literal["done", "cancelled", "failed"] = "done"
    context: ModelContext | None = None

    def image_ids(self) -> list[str]:
        """Every stored picture this turn mentions, in order of first mention.

        These must all be in the store before the turn is appended (that is what makes a row
        never point at a missing file) and are what an export copies. Action payloads are
        opaque to the host, so images they mention are not tracked.
        """
        ids: list[str] = list(self.request.image_ids)
        for part in self.parts:
            if isinstance(part, ImagePart):
                ids.append(part.image_id)
                if part.provenance is not None:
                    ids.extend(part.provenance.parents)
            elif isinstance(part, BoxPart) and part.target_image:
                ids.append(part.target_image)
        return list(dict.fromkeys(ids))


class ForkPoint(_Record):
    """Where a forked session branched off: its parent and the last turn it inherited."""

    session_id: str
    turn_index: int = Field(ge=0)


class SessionRecord(_Record):
    """A conversation's identity and defaults; its turns are stored separately."""

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, pattern=r"^[0-9a-f]{32}$")
    created_at: datetime = Field(default_factory=_now)
    title: str = ""
    variant: str | None = None
    default_skill: str | None = None
    parent: ForkPoint | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


# --- image identity -----------------------------------------------------------------------------
# Image ids come from ``core_models.image_io.content_hash`` (sha256 over a versioned header with
# mode and size, then the raw RGB bytes) so that the store, the ViT feature cache and every other
# part of the product name a picture the same way. Stored pictures are canonicalised with the same
# ``to_rgb`` that the hash applies, so a stored file's pixels always hash back to its id.


def _canonical_rgb(image: Image.Image) -> Image.Image:
    """The RGB picture that ``content_hash`` hashes (transparency composited onto white)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    return to_rgb(image)


# --- the store ----------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE sessions (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE turns (
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    status      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    record      TEXT NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE TABLE turn_images (
    session_id  TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    image_id    TEXT NOT NULL REFERENCES images(id),
    PRIMARY KEY (session_id, idx, image_id),
    FOREIGN KEY (session_id, idx) REFERENCES turns(session_id, idx) ON DELETE CASCADE
);
CREATE INDEX turn_images_by_image ON turn_images(image_id);
"""


class SessionStore:
    """Sessions, turns and images under one directory; safe to share between threads.

    One SQLite connection is shared behind a lock (SQLite serialises writers anyway); other
    processes may open the same root, ``BEGIN IMMEDIATE`` plus a busy timeout keeps them apart.
    """

    def __init__(self, root: Path | str, *, busy_timeout: float = 10.0) -> None:
        """Open (or create) the store under ``root``. ``busy_timeout``: seconds a write waits for
        another connection's write lock before it fails with a `StoreError`."""
        self.root = Path(root)
        self.images_dir = self.root / IMAGES_DIR
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / DB_NAME
        self.busy_timeout = busy_timeout
        self._lock = threading.RLock()
        with self._sqlite_errors("open"):
            self._db = sqlite3.connect(self.db_path, isolation_level=None,
                                       check_same_thread=False, timeout=busy_timeout)
        try:
            with self._sqlite_errors("open"):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.execute("PRAGMA foreign_keys=ON")
                self._open_schema()
        except BaseException:
            self._db.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "SessionStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken eagerly so concurrent writers queue instead of racing."""
        with self._lock, self._sqlite_errors("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT must not leave it open either
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:  # SQLite already rolled back (a full disk does that)
                        pass
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so multi-statement reads see one consistent snapshot."""
        with self._lock, self._sqlite_errors("read"):
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")

    @contextmanager
    def _sqlite_errors(self, doing: str) -> Iterator[None]:
        """SQLite's refusals as `StoreError`s that say what happened to the file and what to do."""
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(self._explain(doing, exc)) from exc

    def _explain(self, doing: str, exc: sqlite3.Error) -> str:
        text = str(exc)
        lowered = text.lower()
        if "locked" in lowered or "busy" in lowered:
            return (f"{self.db_path} is locked by another connection (waited "
                    f"{self.busy_timeout:g} s to {doing}): {text}; nothing was written, try "
                    "again once it is free")
        if "full" in lowered or "i/o error" in lowered:
            return (f"cannot {doing} {self.db_path}: {text} (is the disk full?); this "
                    "write was not saved, what was saved before is intact")
        if "readonly" in lowered or "read-only" in lowered or "permission" in lowered:
            return (f"cannot {doing} {self.db_path}: the file system refuses it ({text}); "
                    "this write was not saved, what was saved before is intact")
        if "malformed" in lowered or "not a database" in lowered or "corrupt" in lowered:
            return (f"{self.db_path} is damaged (truncated or corrupt?): {text}; it was left "
                    "as it is, restore it from a backup or move it aside to start a new store "
                    f"(the pictures under {self.images_dir} are untouched)")
        return f"cannot {doing} {self.db_path}: {text}"

    def _open_schema(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_meta (key TEXT PRIMARY KEY, value TEXT)")
            row = db.execute("SELECT value FROM schema_meta WHERE key='store_schema_version'"
                             ).fetchone()
            if row is None:
                # executescript() would COMMIT our transaction, so run statements one by one.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("INSERT INTO schema_meta VALUES ('store_schema_version', ?)",
                           (str(STORE_SCHEMA_VERSION),))
                return
            found = int(row[0])
            if found > STORE_SCHEMA_VERSION:
                raise StoreError(
                    f"{self.db_path} has store schema version {found}, but this seedx-agent "
                    f"only understands up to {STORE_SCHEMA_VERSION}: it was written by a newer "
                    f"version. Upgrade seedx-agent (the store was left untouched).")
            for version in range(found, STORE_SCHEMA_VERSION):
                step = MIGRATIONS.get(version)
                if step is None:
                    raise StoreError(f"{self.db_path}: no migration from store schema version "
                                     f"{version} to {version + 1}")
                step(db)
            if found != STORE_SCHEMA_VERSION:
                db.execute("UPDATE schema_meta SET value=? WHERE key='store_schema_version'",
                           (str(STORE_SCHEMA_VERSION),))

    def schema_version(self) -> int:
        """The store schema version recorded in the database."""
        with self._read() as db:
            row = db.execute("SELECT value FROM schema_meta WHERE key='store_schema_version'"
                             ).fetchone()
        return int(row[0])

    # -- images

    def image_path(self, image_id: str) -> Path:
        """Where the picture ``image_id`` lives (two-letter fan-out keeps directories small)."""
        if len(image_id) != 64 or any(c not in "0123456789abcdef" for c in image_id):
            raise StoreError(f"not an image id (64 lowercase hex digits): {image_id!r}")
        return self.images_dir / image_id[:2] / f"{image_id}.png"

    def put_image(self, image: Image.Image | bytes) -> str:
        """Store a picture (a PIL image, or the bytes of an image file) and return its id.

        Bytes go through ``load_image``, the product's front door for untrusted input (size
        limits, full decode, EXIF orientation), so they get the id the agent would give them.
        The file is durable on disk before its ``images`` row is committed, and turns can only
        reference images that have a row, hence the crash-safety rule of this module.
        """
        if isinstance(image, (bytes, bytearray, memoryview)):
            try:
                image = load_image(image)
            except ImageInputError as exc:
                raise StoreError(f"put_image: {exc}") from exc
        rgb = _canonical_rgb(image)
        image_id = content_hash(rgb)
        path = self.image_path(image_id)
        # The file check, the write and the row are one write transaction, so a concurrent
        # delete_session (which unlinks orphans under the same lock) cannot remove the file
        # between our check and our row.
        with self._write() as db:
            if not self._file_matches(path, image_id):
                try:
                    self._write_image_file(rgb, path)
                except OSError as exc:  # a full disk, a read-only or forbidden folder
                    raise StoreError(f"cannot save image {image_id} to {path}: "
                                     f"{exc.strerror or exc}; nothing was written") from exc
                pause_point("image_written")
            db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?)",
                       (image_id, rgb.width, rgb.height, _now().isoformat()))
        return image_id

    def _write_image_file(self, image: Image.Image, path: Path) -> None:
        """Whole or absent (`core_models.files.atomic_write`): never a half-written PNG."""
        with atomic_write(path) as tmp:
            image.save(tmp, format="PNG")

    def _file_matches(self, path: Path, image_id: str) -> bool:
        try:
            self._read_verified(image_id, path)
        except StoreError:
            return False
        return True

    def _read_verified(self, image_id: str, path: Path | None = None) -> tuple[bytes, Image.Image]:
        """The file's bytes and decoded image, after checking its pixels still hash to its id."""
        path = path or self.image_path(image_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"image {image_id} is missing from the store ({path})") from None
        except OSError as exc:
            raise StoreError(f"image {image_id} cannot be read ({path}): "
                             f"{exc.strerror or exc}") from exc
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Exception as exc:
            raise StoreError(f"image {image_id} is corrupt ({path}): {exc}") from exc
        if content_hash(image) != image_id:
            raise StoreError(f"image {image_id} is corrupt ({path}): its content hash differs")
        return data, image

    def get_image(self, image_id: str) -> Image.Image:
        """The picture ``image_id`` (RGB), verified against its id; corruption raises."""
        return self._read_verified(image_id)[1]

    def has_image(self, image_id: str) -> bool:
        with self._read() as db:
            return db.execute("SELECT 1 FROM images WHERE id=?", (image_id,)).fetchone() is not None

    # -- sessions

    def create_session(self, *, title: str = "", variant: str | None = None,
                       default_skill: str | None = None,
                       metadata: dict[str, Any] | None = None) -> SessionRecord:
        record = SessionRecord(title=title, variant=variant, default_skill=default_skill,
                               metadata=metadata or {})
        with self._write() as db:
            self._insert_session(db, record)
        return record

    @staticmethod
    def _insert_session(db: sqlite3.Connection, record: SessionRecord) -> None:
        db.execute("INSERT INTO sessions VALUES (?, ?, ?)",
                   (record.id, record.created_at.isoformat(), record.model_dump_json()))

    def get_session(self, session_id: str) -> SessionRecord:
        with self._read() as db:
            return self._session(db, session_id)

    def _session(self, db: sqlite3.Connection, session_id: str) -> SessionRecord:
        row = db.execute("SELECT record FROM sessions WHERE id=?", (session_id,)).fetchone()
        if row is None:
            raise SessionNotFound(f"no session {session_id!r} in {self.db_path}")
        return self._load(SessionRecord, row[0], f"session {session_id}")

    def list_sessions(self) -> list[SessionRecord]:
        """Every session, oldest first."""
        with self._read() as db:
            rows = db.execute("SELECT id, record FROM sessions ORDER BY created_at, rowid"
                              ).fetchall()
        return [self._load(SessionRecord, record, f"session {sid}") for sid, record in rows]

    def delete_session(self, session_id: str) -> None:
        """Remove a session, its turns, and the pictures nothing else references any more.

        Pictures shared with forks or other sessions stay. Files are unlinked only after the
        commit, so a crash in between leaves unreferenced files, never dangling rows. A picture
        put but not yet referenced by any turn is not touched, unless this session also used it.
        """
        with self._write() as db:
            self._session(db, session_id)
            used = [r[0] for r in db.execute(
                "SELECT DISTINCT image_id FROM turn_images WHERE session_id=?", (session_id,))]
            db.execute("DELETE FROM sessions WHERE id=?", (session_id,))
            orphans = [i for i in used if db.execute(
                "SELECT 1 FROM turn_images WHERE image_id=? LIMIT 1", (i,)).fetchone() is None]
            db.executemany("DELETE FROM images WHERE id=?", [(i,) for i in orphans])
        for image_id in orphans:  # unless another writer put the picture again meanwhile
            with self._write() as db:
                if db.execute("SELECT 1 FROM images WHERE id=?", (image_id,)).fetchone() is None:
                    self.image_path(image_id).unlink(missing_ok=True)

    # -- turns

    def append_turn(self, record: TurnRecord) -> TurnRecord:
        """Store ``record`` as the session's next turn; its index must be exactly that next one.

        Every image the turn mentions must already be in the store (``put_image``). A second
        writer racing for the same index gets a ``StoreError``, never a duplicate turn.
        """
        with self._write() as db:
            self._session(db, record.session_id)
            expected = self._next_index(db, record.session_id)
            if record.index != expected:
                raise StoreError(f"session {record.session_id}: turn index {record.index} is not "
                                 f"the next one ({expected})")
            self._insert_turn(db, record)
            pause_point("in_transaction")
        pause_point("committed")
        return record

    def next_index(self, session_id: str) -> int:
        """The index the session's next turn must carry."""
        with self._read() as db:
            self._session(db, session_id)
            return self._next_index(db, session_id)

    @staticmethod
    def _next_index(db: sqlite3.Connection, session_id: str) -> int:
        row = db.execute("SELECT MAX(idx) FROM turns WHERE session_id=?", (session_id,)).fetchone()
        return 0 if row[0] is None else row[0] + 1

    def _insert_turn(self, db: sqlite3.Connection, record: TurnRecord) -> None:
        image_ids = record.image_ids()
        missing = [i for i in image_ids
                   if db.execute("SELECT 1 FROM images WHERE id=?", (i,)).fetchone() is None]
        if missing:
            raise StoreError(f"session {record.session_id} turn {record.index} references images "
                             f"not in the store (put_image them first): {', '.join(missing)}")
        db.execute("INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                   (record.session_id, record.index, record.status,
                    record.created_at.isoformat(), record.model_dump_json()))
        db.executemany("INSERT INTO turn_images VALUES (?, ?, ?)",
                       [(record.session_id, record.index, i) for i in image_ids])

    def turns(self, session_id: str) -> list[TurnRecord]:
        """All turns of a session in order; with ``get_session`` this is how a session resumes."""
        with self._read() as db:
            self._session(db, session_id)
            return self._turns(db, session_id)

    def _turns(self, db: sqlite3.Connection, session_id: str) -> list[TurnRecord]:
        rows = db.execute("SELECT idx, record FROM turns WHERE session_id=? ORDER BY idx",
                          (session_id,)).fetchall()
        return [self._load(TurnRecord, record, f"session {session_id} turn {idx}")
                for idx, record in rows]

    def rollback_turn(self, session_id: str, index: int) -> None:
        """Drop the last turn when it was cancelled or failed, so the user can retry it.

        Completed turns are history and are not rolled back (fork instead).
        """
        with self._write() as db:
            self._session(db, session_id)
            row = db.execute("SELECT status FROM turns WHERE session_id=? AND idx=?",
                             (session_id, index)).fetchone()
            if row is None:
                raise StoreError(f"session {session_id} has no turn {index}")
            if index != self._next_index(db, session_id) - 1:
                raise StoreError(f"session {session_id}: turn {index} is not the last turn")
            if row[0] == "done":
                raise StoreError(f"session {session_id}: turn {index} completed; only a "
                                 f"cancelled or failed last turn can be rolled back")
            db.execute("DELETE FROM turns WHERE session_id=? AND idx=?", (session_id, index))

    def fork(self, session_id: str, at_turn: int) -> SessionRecord:
        """A new session holding turns ``0 … at_turn`` of ``session_id``, its parent recorded.

        Turns are copied (with the new session id); pictures are shared by hash, not copied.
        """
        with self._write() as db:
            source = self._session(db, session_id)
            rows = db.execute("SELECT idx, record FROM turns WHERE session_id=? AND idx<=? "
                              "ORDER BY idx", (session_id, at_turn)).fetchall()
            if at_turn < 0 or len(rows) != at_turn + 1:
                raise StoreError(f"session {session_id} has no turn {at_turn} to fork at")
            fork = SessionRecord(title=source.title, variant=source.variant,
                                 default_skill=source.default_skill,
                                 metadata=dict(source.metadata),
                                 parent=ForkPoint(session_id=session_id, turn_index=at_turn))
            self._insert_session(db, fork)
            for idx, raw in rows:
                turn = self._load(TurnRecord, raw, f"session {session_id} turn {idx}")
                self._insert_turn(db, turn.model_copy(update={"session_id": fork.id}))
        return fork

    # -- export

    def export(self, session_id: str, dest_dir: Path | str) -> Path:
        """Write ``dest_dir/transcript.json`` and ``dest_dir/images/<id>.png``; returns dest_dir.

        Everything is written into a hidden sibling directory that is renamed into place at the
        end (`atomic_write`), so ``dest_dir`` either holds a complete export or does not exist. Images are
        verified on the way out, so an export never ships a corrupt picture.
        """
        dest = Path(dest_dir)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise StoreError(f"export destination {dest} exists and is not an empty directory")
        with self._read() as db:  # one snapshot: no turn appended between the two reads
            session = self._session(db, session_id)
            turns = self._turns(db, session_id)
        try:
            with atomic_write(dest, directory=True) as tmp:
                (tmp / IMAGES_DIR).mkdir()
                for image_id in dict.fromkeys(i for t in turns for i in t.image_ids()):
                    data, _ = self._read_verified(image_id)
                    (tmp / IMAGES_DIR / f"{image_id}.png").write_bytes(data)
                transcript = {
                    "schema_version": RECORD_SCHEMA_VERSION,
                    "store_schema_version": STORE_SCHEMA_VERSION,
                    "session": session.model_dump(mode="json"),
                    "turns": [t.model_dump(mode="json") for t in turns],
                }
                (tmp / TRANSCRIPT_NAME).write_text(json.dumps(transcript, indent=2,
                                                              ensure_ascii=False))
        except OSError as exc:  # a full disk or a refused folder: atomic_write left nothing
            raise StoreError(f"cannot export session {session_id} to {dest}: "
                             f"{exc.strerror or exc}; nothing was written") from exc
        return dest

    # -- helpers

    @staticmethod
    def _load(model: type[_Record], raw: str, what: str) -> Any:
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise StoreError(f"stored {what} does not validate as {model.__name__}: {exc}"
                             ) from exc


# --- migrations ---------------------------------------------------------------------------------

def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Store 1 -> 2: rewrite every turn row with today's field names (provenance ``steps`` ->
    ``num_inference_steps``, ``guidance`` -> ``guidance_scale``, ``image_guidance`` ->
    ``image_guidance_scale``, ``parent_image`` -> ``parents``) and record schema 2. The records'
    own validators read version 1; this makes the rows say version 2 so they are read once."""
    rows = db.execute("SELECT session_id, idx, record FROM turns").fetchall()
    for session_id, idx, raw in rows:
        data = json.loads(raw)
        data["schema_version"] = RECORD_SCHEMA_VERSION
        try:
            record = TurnRecord.model_validate(data)
        except ValidationError as exc:
            raise StoreError(f"migrating session {session_id} turn {idx} to store schema 2: "
                             f"{exc}") from exc
        db.execute("UPDATE turns SET record=? WHERE session_id=? AND idx=?",
                   (record.model_dump_json(), session_id, idx))
    for session_id, raw in db.execute("SELECT id, record FROM sessions").fetchall():
        data = json.loads(raw)
        data["schema_version"] = RECORD_SCHEMA_VERSION
        db.execute("UPDATE sessions SET record=? WHERE id=?", (json.dumps(data), session_id))


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _migrate_1_to_2}
"""Each step runs inside the opening transaction, so a failed upgrade changes nothing. Looked up
at open time, so tests (and future versions) can register steps."""
