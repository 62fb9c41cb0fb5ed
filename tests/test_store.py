"""The session store: round trips, forks, export, crash safety, corruption, concurrency, schema."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from PIL import Image

from seedx_agent import store as store_mod
from seedx_agent.store import (ForkPoint, SessionNotFound, SessionRecord, SessionStore, StoreError,
                               TurnRecord, TurnRequest, content_hash)
from seedx_agent.types import Action, BoxPart, ErrorEvent, ImagePart, Provenance, TextPart
from helpers import synthetic_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path):
    with SessionStore(tmp_path / "store") as s:
        yield s


def image_files(s: SessionStore) -> set[Path]:
    return set(s.images_dir.rglob("*.png"))


def make_turn(s: SessionStore, session_id: str, index: int, *, seed: int = 0,
              status: str = "done") -> TurnRecord:
    """A turn mentioning an input picture, a generated one and a box on the input."""
    src = synthetic_image(12, 8, seed=seed)
    out = synthetic_image(8, 8, seed=seed + 100)
    src_id, out_id = s.put_image(src), s.put_image(out)
    return TurnRecord(
        session_id=session_id, index=index,
        request=TurnRequest(text=f"edit {index}", image_ids=(src_id,), skill="edit", edit=True,
                            variant="seed_x_edit", options={"seed": seed, "steps": 2}),
        parts=(TextPart(text="Here it is."),
               BoxPart(bins=(112, 112, 50, 60), phrase="car").on(12, 8, target_image=src_id,
                                                                  target_kind="input"),
               ImagePart(image_id=out_id, width=8, height=8, role="edited",
                         provenance=Provenance(model="seed-x", variant="seed_x_edit", seed=seed,
                                               parents=(src_id,)))),
        # A plugin that is not installed here: its payload must survive as an opaque dict.
        actions=(Action(skill="thirdparty.layout", action="place", version=3,
                        payload={"items": [{"box": [1, 2, 3, 4], "label": "é"}], "z": None}),),
        errors=(ErrorEvent(source="skill.caption", message="timed out"),) if status != "done"
        else (),
        finish_reason="eos" if status == "done" else "cancelled",
        variant="seed_x_edit", prompt_tokens=300, reply_tokens=75, status=status)


# --- round trips --------------------------------------------------------------------------------

def test_records_round_trip_through_json(store: SessionStore) -> None:
    session = store.create_session(title="t")
    turn = make_turn(store, session.id, 0)
    assert TurnRecord.model_validate_json(turn.model_dump_json()) == turn
    assert SessionRecord.model_validate_json(session.model_dump_json()) == session
    assert turn.schema_version == session.schema_version == store_mod.RECORD_SCHEMA_VERSION
    with pytest.raises(Exception):
        turn.index = 3  # frozen


def test_sessions_and_turns_round_trip(store: SessionStore) -> None:
    a = store.create_session(title="first", variant="seed_x_i", default_skill="chat",
                             metadata={"user": "u1", "tags": ["x"]})
    b = store.create_session(title="second")
    assert store.get_session(a.id) == a
    assert [s.id for s in store.list_sessions()] == [a.id, b.id]
    assert store.turns(a.id) == []

    t0, t1 = make_turn(store, a.id, 0), make_turn(store, a.id, 1, seed=1, status="cancelled")
    store.append_turn(t0)
    store.append_turn(t1)
    loaded = store.turns(a.id)
    assert loaded == [t0, t1]
    assert loaded[0].actions[0].payload == {"items": [{"box": [1, 2, 3, 4], "label": "é"}],
                                            "z": None}
    assert isinstance(loaded[0].parts[2], ImagePart)
    with pytest.raises(SessionNotFound):
        store.get_session("0" * 32)
    with pytest.raises(SessionNotFound):
        store.turns("0" * 32)


def test_append_rejects_wrong_index_and_unknown_images(store: SessionStore) -> None:
    s = store.create_session()
    with pytest.raises(StoreError, match="not the next one"):
        store.append_turn(make_turn(store, s.id, 1))
    store.append_turn(make_turn(store, s.id, 0))
    with pytest.raises(StoreError, match="not the next one"):
        store.append_turn(make_turn(store, s.id, 0))
    ghost = TurnRecord(session_id=s.id, index=1, request=TurnRequest(image_ids=("ab" * 32,)))
    with pytest.raises(StoreError, match="not in the store"):
        store.append_turn(ghost)
    with pytest.raises(SessionNotFound):
        store.append_turn(make_turn(store, "f" * 32, 0))
    assert len(store.turns(s.id)) == 1


def test_reopening_sees_everything(tmp_path: Path) -> None:
    with SessionStore(tmp_path) as first:
        s = first.create_session(title="keep me")
        turn = first.append_turn(make_turn(first, s.id, 0))
        pic = synthetic_image(10, 6, seed=5)
        pic_id = first.put_image(pic)
    with SessionStore(tmp_path) as second:
        assert second.list_sessions() == [s]
        assert second.get_session(s.id) == s and second.turns(s.id) == [turn]
        assert second.get_image(pic_id).tobytes() == pic.tobytes()
        assert second.schema_version() == store_mod.STORE_SCHEMA_VERSION


# --- images -------------------------------------------------------------------------------------

def test_put_image_is_content_addressed(store: SessionStore) -> None:
    pic = synthetic_image(9, 7, seed=2)
    image_id = store.put_image(pic)
    assert image_id == content_hash(pic)
    png = io.BytesIO()
    pic.save(png, format="PNG", compress_level=9)
    assert store.put_image(png.getvalue()) == image_id  # same pixels, other encoding: same id
    assert store.put_image(pic.convert("RGBA")) == image_id  # canonicalised to RGB
    assert len(image_files(store)) == 1
    path = store.image_path(image_id)
    assert path == store.images_dir / image_id[:2] / f"{image_id}.png"
    got = store.get_image(image_id)
    assert got.mode == "RGB" and got.size == (9, 7) and got.tobytes() == pic.tobytes()
    with pytest.raises(StoreError, match="put_image: image data is not a recognised image"):
        store.put_image(b"not an image")


def test_ids_agree_with_the_product_hash_for_transparent_images(store: SessionStore) -> None:
    """Ids are ``core_models.image_io.content_hash``; the stored pixels must hash back to it."""
    from core_models import image_io

    assert content_hash is image_io.content_hash
    rgba = synthetic_image(6, 6, seed=8).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 90))
    image_id = store.put_image(rgba)
    assert image_id == image_io.content_hash(rgba)
    assert store.get_image(image_id).tobytes() == image_io.to_rgb(rgba).tobytes()


def test_corrupt_or_missing_image_is_detected_and_repaired_by_put(store: SessionStore) -> None:
    pic = synthetic_image(8, 8, seed=3)
    image_id = store.put_image(pic)
    path = store.image_path(image_id)

    path.write_bytes(path.read_bytes()[:40])  # truncated file
    with pytest.raises(StoreError, match="corrupt"):
        store.get_image(image_id)
    synthetic_image(8, 8, seed=4).save(path, format="PNG")  # a valid PNG, other pixels
    with pytest.raises(StoreError, match="content hash differs"):
        store.get_image(image_id)
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        store.get_image(image_id)

    assert store.put_image(pic) == image_id  # putting it again rewrites the file
    assert store.get_image(image_id).tobytes() == pic.tobytes()


# --- crash safety -------------------------------------------------------------------------------

class Crash(Exception):
    pass


def test_crash_between_image_write_and_turn_commit(store: SessionStore,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    s = store.create_session()
    kept = store.append_turn(make_turn(store, s.id, 0))
    kept_files = image_files(store)
    new_turn = make_turn(store, s.id, 1, seed=7)  # its images are written and durable now

    original = SessionStore._insert_turn

    def insert_then_crash(self, db, record):
        original(self, db, record)  # rows written inside the transaction …
        raise Crash("power cut before COMMIT")

    monkeypatch.setattr(SessionStore, "_insert_turn", insert_then_crash)
    with pytest.raises(Crash):
        store.append_turn(new_turn)
    monkeypatch.undo()

    assert store.turns(s.id) == [kept]  # nothing half-committed, nothing lost
    for path in kept_files:
        assert store.get_image(path.stem)
    for image_id in new_turn.image_ids():  # the already-written images are intact, just unused
        assert store.get_image(image_id)
    assert store.append_turn(new_turn) == new_turn  # the index is free again
    assert store.turns(s.id) == [kept, new_turn]


def test_crash_while_writing_an_image_leaves_no_trace(store: SessionStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    s = store.create_session()
    kept = store.append_turn(make_turn(store, s.id, 0))
    before = set(store.images_dir.rglob("*"))
    pic = synthetic_image(8, 8, seed=42)

    def crash(*_a, **_k):
        raise Crash("killed before the rename")

    import core_models.files

    monkeypatch.setattr(core_models.files.os, "replace", crash)
    with pytest.raises(Crash):
        store.put_image(pic)
    monkeypatch.undo()
    assert set(store.images_dir.rglob("*")) - before <= {store.image_path(content_hash(pic)).parent}
    assert not store.has_image(content_hash(pic))

    # Crash after the file is in place but before its row is committed: the file is an orphan,
    # and a turn cannot reference the picture until it is put again.
    original = SessionStore._write_image_file

    def write_then_crash(self, image, path):
        original(self, image, path)
        raise Crash("killed before the images row")

    monkeypatch.setattr(SessionStore, "_write_image_file", write_then_crash)
    with pytest.raises(Crash):
        store.put_image(pic)
    monkeypatch.undo()
    image_id = content_hash(pic)
    ghost = TurnRecord(session_id=s.id, index=1, request=TurnRequest(image_ids=(image_id,)))
    with pytest.raises(StoreError, match="not in the store"):
        store.append_turn(ghost)
    assert store.put_image(pic) == image_id
    store.append_turn(ghost)
    assert store.turns(s.id) == [kept, ghost]


def test_hard_kill_mid_transaction(tmp_path: Path) -> None:
    """A process that dies (os._exit) after the turn's rows are written but before COMMIT."""
    with SessionStore(tmp_path) as s:
        session = s.create_session()
        kept = s.append_turn(make_turn(s, session.id, 0))
    child = textwrap.dedent(f"""
        import os, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        from seedx_agent.store import SessionStore
        from test_store import make_turn
        s = SessionStore({str(tmp_path)!r})
        turn = make_turn(s, {session.id!r}, 1, seed=9)
        original = SessionStore._insert_turn
        def die(self, db, record):
            original(self, db, record)
            os._exit(17)
        SessionStore._insert_turn = die
        s.append_turn(turn)
    """)
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True,
                            timeout=60)
    assert result.returncode == 17, result.stderr.decode()
    with SessionStore(tmp_path) as s:
        assert s.turns(session.id) == [kept]
        with sqlite3.connect(s.db_path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            referenced = [r[0] for r in raw.execute("SELECT image_id FROM turn_images")]
        for image_id in referenced:
            assert s.get_image(image_id)
        s.append_turn(make_turn(s, session.id, 1, seed=9))


# --- concurrency --------------------------------------------------------------------------------

def test_concurrent_appends_never_corrupt_or_duplicate(tmp_path: Path) -> None:
    """Threads on one store and on a second store object (another connection) append at once."""
    a, b = SessionStore(tmp_path), SessionStore(tmp_path)
    session = a.create_session()
    per_thread, writers = 8, 4
    errors: list[BaseException] = []

    def writer(s: SessionStore, name: str) -> None:
        try:
            for i in range(per_thread):
                while True:
                    nxt = s.next_index(session.id)
                    turn = TurnRecord(session_id=session.id, index=nxt,
                                      request=TurnRequest(text=f"{name}-{i}"))
                    try:
                        s.append_turn(turn)
                        break
                    except StoreError:
                        continue  # someone else took that index: read again and retry
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(a if k % 2 else b, f"w{k}"))
               for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    turns = a.turns(session.id)
    assert [t.index for t in turns] == list(range(per_thread * writers))
    texts = [t.request.text for t in turns]
    assert sorted(texts) == sorted(f"w{k}-{i}" for k in range(writers) for i in range(per_thread))
    a.close()
    b.close()


def test_racing_for_the_same_index_has_one_winner(store: SessionStore) -> None:
    session = store.create_session()
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def racer(k: int) -> None:
        barrier.wait()
        try:
            store.append_turn(TurnRecord(session_id=session.id, index=0,
                                         request=TurnRequest(text=str(k))))
            outcomes.append("won")
        except StoreError:
            outcomes.append("lost")

    threads = [threading.Thread(target=racer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 5 + ["won"]
    assert len(store.turns(session.id)) == 1


# --- rollback, fork, delete ---------------------------------------------------------------------

def test_rollback_only_drops_a_cancelled_or_failed_last_turn(store: SessionStore) -> None:
    s = store.create_session()
    store.append_turn(make_turn(store, s.id, 0))
    store.append_turn(make_turn(store, s.id, 1, status="failed"))
    with pytest.raises(StoreError, match="not the last"):
        store.rollback_turn(s.id, 0)
    with pytest.raises(StoreError, match="no turn 5"):
        store.rollback_turn(s.id, 5)
    store.rollback_turn(s.id, 1)
    assert [t.index for t in store.turns(s.id)] == [0]
    with pytest.raises(StoreError, match="completed"):
        store.rollback_turn(s.id, 0)
    store.append_turn(make_turn(store, s.id, 1, seed=3))  # the retry takes the freed index


def test_fork_copies_turns_and_shares_images(store: SessionStore) -> None:
    parent = store.create_session(title="p", variant="seed_x_i", default_skill="chat",
                                  metadata={"k": 1})
    for i in range(3):
        store.append_turn(make_turn(store, parent.id, i, seed=i))
    files_before = image_files(store)

    child = store.fork(parent.id, at_turn=1)
    assert child.id != parent.id
    assert child.parent == ForkPoint(session_id=parent.id, turn_index=1)
    assert (child.title, child.variant, child.default_skill, child.metadata) == \
        ("p", "seed_x_i", "chat", {"k": 1})
    assert store.get_session(child.id) == child
    copied = store.turns(child.id)
    original = store.turns(parent.id)
    assert [t.index for t in copied] == [0, 1]
    assert all(t.session_id == child.id for t in copied)
    assert [t.model_copy(update={"session_id": parent.id}) for t in copied] == original[:2]
    assert image_files(store) == files_before  # shared by hash, nothing copied

    store.append_turn(make_turn(store, child.id, 2, seed=50))  # the branches diverge
    assert len(store.turns(parent.id)) == 3 and len(store.turns(child.id)) == 3
    with pytest.raises(StoreError, match="no turn 3"):
        store.fork(parent.id, at_turn=3)
    with pytest.raises(StoreError, match="no turn -1"):
        store.fork(parent.id, at_turn=-1)


def test_delete_keeps_images_still_used_elsewhere(store: SessionStore) -> None:
    parent = store.create_session()
    store.append_turn(make_turn(store, parent.id, 0, seed=0))
    store.append_turn(make_turn(store, parent.id, 1, seed=1))
    child = store.fork(parent.id, at_turn=0)
    only_parent = set(store.turns(parent.id)[1].image_ids())
    shared = set(store.turns(child.id)[0].image_ids())

    store.delete_session(parent.id)
    with pytest.raises(SessionNotFound):
        store.get_session(parent.id)
    assert [s.id for s in store.list_sessions()] == [child.id]
    for image_id in shared:
        assert store.get_image(image_id)
    for image_id in only_parent:
        assert not store.image_path(image_id).exists() and not store.has_image(image_id)
    assert store.get_session(child.id).parent.session_id == parent.id  # history is kept

    store.delete_session(child.id)
    assert image_files(store) == set()
    with pytest.raises(SessionNotFound):
        store.delete_session(child.id)


# --- export -------------------------------------------------------------------------------------

def test_export_writes_transcript_and_images(store: SessionStore, tmp_path: Path) -> None:
    s = store.create_session(title="export me")
    turns = [store.append_turn(make_turn(store, s.id, i, seed=i)) for i in range(2)]
    dest = store.export(s.id, tmp_path / "out" / "bundle")
    assert dest == tmp_path / "out" / "bundle"

    transcript = json.loads((dest / "transcript.json").read_text())
    assert transcript["schema_version"] == store_mod.RECORD_SCHEMA_VERSION
    assert SessionRecord.model_validate(transcript["session"]) == s
    assert [TurnRecord.model_validate(t) for t in transcript["turns"]] == turns
    wanted = {i for t in turns for i in t.image_ids()}
    assert {p.stem for p in (dest / "images").iterdir()} == wanted
    for image_id in wanted:
        assert content_hash(Image.open(dest / "images" / f"{image_id}.png")) == image_id
    assert [p.name for p in dest.parent.iterdir()] == ["bundle"]  # no temp dir left behind

    with pytest.raises(StoreError, match="not an empty directory"):
        store.export(s.id, dest)
    (tmp_path / "empty").mkdir()
    assert (store.export(s.id, tmp_path / "empty") / "transcript.json").exists()


def test_failed_export_leaves_nothing(store: SessionStore, tmp_path: Path) -> None:
    s = store.create_session()
    turn = store.append_turn(make_turn(store, s.id, 0))
    store.image_path(turn.image_ids()[-1]).write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupt"):
        store.export(s.id, tmp_path / "out" / "bundle")
    assert list((tmp_path / "out").iterdir()) == []


# --- schema versions ----------------------------------------------------------------------------

def test_newer_store_schema_is_refused_clearly(tmp_path: Path) -> None:
    SessionStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as raw:
        raw.execute("UPDATE schema_meta SET value='99' WHERE key='store_schema_version'")
    with pytest.raises(StoreError, match=r"schema version 99.*newer.*Upgrade seedx-agent"):
        SessionStore(tmp_path)
    with sqlite3.connect(tmp_path / "sessions.sqlite3") as raw:  # left untouched
        assert raw.execute("SELECT value FROM schema_meta").fetchone() == ("99",)


def test_migration_hook_runs_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with SessionStore(tmp_path) as s:
        session = s.create_session(title="old")
    calls: list[int] = []

    current = store_mod.STORE_SCHEMA_VERSION

    def next_step(db: sqlite3.Connection) -> None:
        calls.append(1)
        db.execute("ALTER TABLE sessions ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0")

    monkeypatch.setattr(store_mod, "STORE_SCHEMA_VERSION", current + 1)
    monkeypatch.setattr(store_mod, "MIGRATIONS", {**store_mod.MIGRATIONS, current: next_step})
    with SessionStore(tmp_path) as s:
        assert s.schema_version() == current + 1 and s.get_session(session.id) == session
    SessionStore(tmp_path).close()
    assert calls == [1]

    monkeypatch.setattr(store_mod, "STORE_SCHEMA_VERSION", current + 2)  # no step registered
    with pytest.raises(StoreError, match=f"no migration from store schema version {current + 1}"):
        SessionStore(tmp_path)


def test_a_store_written_by_schema_1_opens_and_migrates(tmp_path: Path) -> None:
    """tests/fixtures/store_v1 was written by the code before the renames (its README)."""
    import shutil

    root = tmp_path / "store"
    shutil.copytree(Path(__file__).parent / "fixtures" / "store_v1", root)
    with sqlite3.connect(root / "sessions.sqlite3") as raw:
        assert raw.execute("SELECT value FROM schema_meta").fetchone() == ("1",)
    with SessionStore(root) as s:
        assert s.schema_version() == store_mod.STORE_SCHEMA_VERSION
        (session,) = s.list_sessions()
        grounding, drawing, edit = s.turns(session.id)
        assert grounding.parts[2].type == "box" and grounding.actions[0].skill == "grounding"
        (drawn,) = [p for p in drawing.parts if p.type == "image"]
        (edited,) = [p for p in edit.parts if p.type == "image"]
        assert (drawn.provenance.seed, drawn.provenance.num_inference_steps,
                drawn.provenance.guidance_scale, drawn.provenance.parents) == (7, 2, 7.5, ())
        assert edited.provenance.image_guidance_scale == 1.5
        assert edited.provenance.parents == (drawn.image_id,)
        assert s.get_image(edited.image_id).size == (edited.width, edited.height)
        assert all(t.schema_version == store_mod.RECORD_SCHEMA_VERSION for t in (grounding, edit))
        raw_row = s._db.execute("SELECT record FROM turns WHERE idx=1").fetchone()[0]
        assert '"num_inference_steps":2' in raw_row and '"steps"' not in raw_row
        exported = s.export(session.id, tmp_path / "export")
    assert (exported / "images" / f"{drawn.image_id}.png").is_file()


def test_importing_the_store_does_not_import_torch() -> None:
    code = "import sys, seedx_agent.store; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
