"""A process SIGKILLed at each named point of a turn loses no committed turn (issue 10, 3).

The store's promise is about instants a unit test cannot reach from inside one process: a
write that never finishes, a transaction that never commits, a process gone between two
statements. So a child process runs a real session on the tiny stack (replayed replies, real
store, real de-tokenizer), commits two turns, then starts a third with ``SEEDX_PAUSE_AT`` set
(`seedx_agent.pause_points`). When it reports the point, the test looks at the store from the
outside while the child is frozen there, kills it with SIGKILL (nothing runs after that: no
``finally``, no atexit, no SQLite rollback), then opens the store, checks every reference, and
resumes the session with one more turn.

Each child would spend most of its time importing torch and diffusers, more than this file's
budget for four of them. So the children come from a multiprocessing forkserver that imports
those once: each child is still a fresh process of its own, forked from a server that has run
no torch code, and it builds its own runtime and store.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sqlite3
import time
from importlib import metadata
from pathlib import Path

import pytest

from seedx_agent.pause_points import POINTS
from seedx_agent.store import SessionStore, StoreError, TurnRecord
from seedx_agent.types import ImagePart
from helpers import synthetic_image

PAUSE_TIMEOUT_S = 120.0
"""Generous: the child may queue behind the long training job for the one shared core."""

INTERRUPTED_TEXT = "Draw a blue square."


# --- what every store must look like, whatever happened to its writers -------------------------

def assert_store_sound(store: SessionStore) -> None:
    """SQLite's own checks, then every reference: no row names a missing or corrupt picture.

    Files without a row are allowed (the store's ordering rule leaves them behind on purpose);
    rows without a file, or a turn whose pictures have no row, are not.
    """
    with contextlib.closing(sqlite3.connect(store.db_path)) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == []
        rows = {r[0] for r in raw.execute("SELECT id FROM images")}
        links = raw.execute("SELECT session_id, idx, image_id FROM turn_images").fetchall()
    problems = []
    for image_id in sorted(rows):
        try:
            store.get_image(image_id)  # the bytes hash back to the id: whole, not half-written
        except StoreError as exc:
            problems.append(str(exc))
    for session in store.list_sessions():
        for turn in store.turns(session.id):
            named = set(turn.image_ids())
            linked = {i for s, x, i in links if (s, x) == (session.id, turn.index)}
            if named - rows:
                problems.append(f"session {session.id} turn {turn.index} names pictures with no "
                                f"row: {sorted(named - rows)}")
            if linked != named:
                problems.append(f"session {session.id} turn {turn.index}: turn_images "
                                f"{sorted(linked)} differ from the record's {sorted(named)}")
    assert not problems, "the store is not sound:\n" + "\n".join(problems)


# --- the child ----------------------------------------------------------------------------------

def interrupted_session(root: str, point: str, pause_file: str, log_file: str,
                        report_file: str) -> None:
    """Run in the child: two committed turns, then a third that pauses at ``point``.

    Its stderr goes to ``log_file`` so the test can show why a child died before pausing.
    ``report_file`` gets the committed turns as the session saw them, before the third starts.
    """
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(log, 2)
    import torch

    from seedx_agent.testing import Reply, replay_runtime

    torch.set_num_threads(1)
    runtime = replay_runtime([
        Reply().text("A smooth gradient, brighter on the left at").box(60, 112, 90, 200).eos(),
        Reply().text("Here is a red circle:").image(seed=3).eos(),
        Reply().text("Here is a blue square:").image(seed=11).eos(),
    ])
    store = SessionStore(root)
    session = runtime.open_session(store=store, title="crash safety")
    first = session.ask("What is in this picture?", [synthetic_image(96, 64, seed=5)])
    second = session.ask("Draw a red circle.", num_inference_steps=1)
    for done in (first, second):
        if not done.ok:
            raise RuntimeError(f"turn {done.turn_index} failed before the pause: {done.errors}")
    Path(report_file).write_text(json.dumps({
        "session_id": session.id,
        "committed": [turn.model_dump(mode="json") for turn in session.history]}))
    os.environ["SEEDX_PAUSE_FILE"] = pause_file
    os.environ["SEEDX_PAUSE_AT"] = point
    done = session.ask(INTERRUPTED_TEXT, num_inference_steps=1)
    raise RuntimeError(f"the turn ended ({done.finish_reason}, errors {done.errors}) without "
                       f"pausing at {point!r}: is its pause_point call still there?")


@pytest.fixture(scope="module")
def child_processes():
    """A multiprocessing context whose children start with torch and the stack imported."""
    context = multiprocessing.get_context("forkserver")
    plugins = sorted({ep.module.split(".")[0] for ep in metadata.entry_points(group="seedx")})
    # transformers and diffusers import their models lazily, so those are named too; a name that
    # no longer exists is skipped by the server and only costs the children time
    context.set_forkserver_preload([
        "torch", "transformers.models.llama.modeling_llama",
        "diffusers.models.autoencoders.autoencoder_kl", "diffusers.models.unets.unet_2d_condition",
        "core_models.stack", "core_models.detokenizer", "core_models.detokenizer_resampler",
        "core_models.mllm", "core_models.qwen_vit", "core_models.tokenizer",
        "core_models.generation", "seedx_agent.runtime", "seedx_agent.session",
        "seedx_agent.testing", *plugins, interrupted_session.__module__])
    return context


def wait_until_paused(child, pause_file: Path, point: str, log_file: Path) -> None:
    deadline = time.monotonic() + PAUSE_TIMEOUT_S
    while True:
        reached = pause_file.read_text().split() if pause_file.exists() else []
        if reached:
            assert reached == [point], f"the child paused at {reached}, not at {point!r}"
            return
        if not child.is_alive():
            pytest.fail(f"the child exited with {child.exitcode} before pausing at {point!r}; "
                        f"its stderr:\n{log_file.read_text()}")
        if time.monotonic() > deadline:
            os.kill(child.pid, signal.SIGKILL)
            pytest.fail(f"the child did not reach {point!r} within {PAUSE_TIMEOUT_S:.0f} s; "
                        f"its stderr:\n{log_file.read_text()}")
        time.sleep(0.02)


def look_while_paused(db_path: Path, session_id: str) -> tuple[bool, int]:
    """From outside, while the child is frozen: is the database write-locked, and how many of
    the session's turns can a reader see?"""
    with contextlib.closing(sqlite3.connect(db_path, timeout=0, isolation_level=None)) as raw:
        visible = raw.execute("SELECT COUNT(*) FROM turns WHERE session_id=?",
                              (session_id,)).fetchone()[0]
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.execute("ROLLBACK")
            locked = False
        except sqlite3.OperationalError as exc:
            assert "locked" in str(exc), exc
            locked = True
    return locked, visible


def image_files(store: SessionStore) -> set[str]:
    return {p.stem for p in store.images_dir.rglob("*.png")}


def image_rows(store: SessionStore) -> set[str]:
    with contextlib.closing(sqlite3.connect(store.db_path)) as raw:
        return {r[0] for r in raw.execute("SELECT id FROM images")}


def generated(turn: TurnRecord) -> list[ImagePart]:
    return [p for p in turn.parts if isinstance(p, ImagePart) and p.role == "generated"]


# --- the test -----------------------------------------------------------------------------------

# While frozen at the point: (database write-locked, turns a reader sees), and afterwards how many
# turns survive. These pin each point where pause_points.py says it is.
AT_THE_POINT = {
    "decoding": (False, 2, 2),
    "image_written": (True, 2, 2),
    "in_transaction": (True, 2, 2),
    "committed": (False, 3, 3),
}
assert set(AT_THE_POINT) == set(POINTS), "a pause point without a crash test (or the reverse)"


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_a_named_point_loses_no_committed_turn_and_the_session_resumes(
        point, tmp_path, child_processes, rt):
    root, pause_file = tmp_path / "store", tmp_path / "paused"
    log_file, report_file = tmp_path / "child.log", tmp_path / "committed.json"
    child = child_processes.Process(target=interrupted_session, args=(
        str(root), point, str(pause_file), str(log_file), str(report_file)), daemon=True)
    child.start()
    try:
        wait_until_paused(child, pause_file, point, log_file)
        report = json.loads(report_file.read_text())
        session_id = report["session_id"]
        committed = [TurnRecord.model_validate(t) for t in report["committed"]]
        assert look_while_paused(root / "sessions.sqlite3", session_id) == AT_THE_POINT[point][:2]
    finally:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert child.exitcode == -signal.SIGKILL, f"the child ended with {child.exitcode}, not SIGKILL"

    with SessionStore(root) as store:
        assert_store_sound(store)
        turns = store.turns(session_id)
        assert len(turns) == AT_THE_POINT[point][2]
        assert turns[:2] == committed  # every committed turn, exactly as the session saw it
        for turn in turns:
            for image_id in turn.image_ids():
                assert store.get_image(image_id)  # readable and verified
        files, rows = image_files(store), image_rows(store)
        before = {i for t in committed for i in t.image_ids()}
        if point == "decoding":  # nothing of the interrupted turn reached the disk
            assert files == rows == before
        elif point == "image_written":  # its picture is whole on disk but never got a row
            (orphan,) = files - before
            assert rows == before and store.get_image(orphan)
        elif point == "in_transaction":  # the picture's row committed, the turn's rolled back
            (orphan,) = files - before
            assert rows == files and not any(orphan in t.image_ids() for t in turns)
        else:  # committed: the interrupted turn is there, whole, with its new picture
            last = turns[2]
            assert (last.index, last.status, last.request.text) == (2, "done", INTERRUPTED_TEXT)
            (drawn,) = generated(last)
            assert drawn.image_id not in before and store.get_image(drawn.image_id)

    # The session resumes from the store alone, as `seedx chat --session` does, with a new
    # runtime in this process: the next turn gets the next index and reads the latest picture.
    from seedx_agent.testing import Reply, replay_runtime

    replay_runtime([Reply().text("It is the picture you drew.").eos()], runtime=rt)
    with SessionStore(root) as store:
        resumed = rt.open_session(store=store, session_id=session_id)
        assert resumed.history == turns
        done = resumed.ask("What did you draw last?")
        assert done.ok, done.errors
        assert done.turn_index == len(turns)
        again = store.turns(session_id)
        assert again[:-1] == turns and again[-1].index == len(turns)
        assert again[-1].status == "done" and again[-1].request.text == "What did you draw last?"
        (latest,) = generated(turns[-1])
        assert again[-1].context.image_ids == (latest.image_id,)
        # the cache was rebuilt from the stored turns before this turn's prompt went on top
        assert resumed.cached_tokens > again[-1].prompt_tokens + again[-1].reply_tokens
        assert_store_sound(store)


def test_a_child_that_never_reaches_its_point_is_reported_with_its_stderr(tmp_path,
                                                                          child_processes):
    """The harness itself: an unknown point never pauses, and the failure shows why."""
    log_file = tmp_path / "child.log"
    child = child_processes.Process(target=interrupted_session, args=(
        str(tmp_path / "store"), "nowhere", str(tmp_path / "paused"), str(log_file),
        str(tmp_path / "committed.json")), daemon=True)
    child.start()
    with pytest.raises(pytest.fail.Exception, match=r"(?s)exited with 1 before pausing at "
                                                     r"'nowhere'.*without pausing at 'nowhere'"):
        wait_until_paused(child, tmp_path / "paused", "nowhere", log_file)
    child.join(30)
    assert not (tmp_path / "paused").exists()
