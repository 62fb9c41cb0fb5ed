"""Two OS processes writing to one store do not corrupt it (issue 10, 4b).

``test_store.py`` races threads, and two connections inside one process, for the same turn
index. Separate processes share nothing but the files: not the store object's lock, not the
connection, not the page cache of one SQLite library instance. Here two spawned processes each
open the store, create a session of their own and, released together, append 20 turns to it and
20 to a session they share and race on (re-reading the next index when they lose). Every turn
mentions a new picture of its own process and one that both processes put at the same moment
(same content id, same file path, two writers). Afterwards the store must hold exactly what the
processes reported as committed, once each, with no gap in any session's indices.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from seedx_agent.store import SessionStore, StoreError, TurnRecord, TurnRequest
from helpers import synthetic_image
from test_crash_safety import assert_store_sound

TURNS = 20
WRITERS = ("left", "right")
JOIN_TIMEOUT_S = 120.0


def append_racing(store: SessionStore, session_id: str, request: TurnRequest) -> TurnRecord:
    """Append at the session's next index, reading it again each time another writer took it."""
    while True:
        record = TurnRecord(session_id=session_id, index=store.next_index(session_id),
                            request=request)
        try:
            return store.append_turn(record)
        except StoreError as exc:
            if "is not the next one" not in str(exc):
                raise


def writer(root: str, number: int, shared_session: str, start, report_file: str,
           log_file: str) -> None:
    """Run in each child; ``report_file`` gets every turn it saw committed."""
    os.dup2(os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    name = WRITERS[number]
    committed = []
    with SessionStore(root) as store:
        own = store.create_session(title=name)
        start.wait(60)
        for i in range(TURNS):
            mine = store.put_image(synthetic_image(20 + number, 16, seed=1000 * number + i))
            both = store.put_image(synthetic_image(16, 16, seed=100 + i))
            committed.append(store.append_turn(TurnRecord(
                session_id=own.id, index=i,
                request=TurnRequest(text=f"{name} {i}", image_ids=(mine, both)))))
            committed.append(append_racing(store, shared_session, TurnRequest(
                text=f"{name} shared {i}", image_ids=(both,))))
    Path(report_file).write_text(json.dumps({
        "session_id": own.id,
        "committed": [t.model_dump(mode="json") for t in committed]}))


def test_two_processes_appending_to_one_store_never_corrupt_lose_or_duplicate(tmp_path):
    root = tmp_path / "store"
    with SessionStore(root) as store:
        shared = store.create_session(title="shared").id
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(WRITERS))
    reports = [tmp_path / f"{name}.json" for name in WRITERS]
    logs = [tmp_path / f"{name}.log" for name in WRITERS]
    children = [context.Process(target=writer, args=(str(root), k, shared, start, str(reports[k]),
                                                     str(logs[k])), daemon=True)
                for k in range(len(WRITERS))]
    for child in children:
        child.start()
    for child, log in zip(children, logs):
        child.join(JOIN_TIMEOUT_S)
        if child.is_alive():
            child.kill()
        assert child.exitcode == 0, (f"a writer ended with {child.exitcode}; its stderr:\n"
                                     f"{log.read_text() if log.exists() else '(none)'}")

    by_session: dict[str, list[TurnRecord]] = {shared: []}
    for report in (json.loads(r.read_text()) for r in reports):
        by_session[report["session_id"]] = []
        for raw in report["committed"]:
            turn = TurnRecord.model_validate(raw)
            by_session[turn.session_id].append(turn)
    with SessionStore(root) as store:
        assert_store_sound(store)
        assert {s.id for s in store.list_sessions()} == set(by_session)
        for session_id, reported in by_session.items():
            stored = store.turns(session_id)
            # exactly what was reported committed, each once, indices 0..n-1 without a gap
            assert [t.index for t in stored] == list(range(len(stored)))
            assert stored == sorted(reported, key=lambda t: t.index)
        shared_turns = store.turns(shared)
        assert len(shared_turns) == TURNS * len(WRITERS)
        for name in WRITERS:  # each writer's shared turns keep the order it appended them in
            mine = [t.request.text for t in shared_turns if t.request.text.startswith(name)]
            assert mine == [f"{name} shared {i}" for i in range(TURNS)]
        pictures = {p.stem for p in store.images_dir.rglob("*.png")}
        assert len(pictures) == TURNS * (len(WRITERS) + 1)  # each shared picture stored once
        assert not list(store.images_dir.rglob(".*.tmp-*")), "a temporary image file was left"
