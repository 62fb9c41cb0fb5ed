"""``seedx serve --replicas``: the session router in front of Ray Serve replicas of the Nano.

The real command, ``seedx serve --serve-config FILE``, runs in a subprocess: a local Ray (its
temp files in a fresh tmp dir via ``$RAY_TMPDIR``) with two CPU replicas of the Nano, one torch
thread each, behind the router. The tests speak HTTP to its port on 127.0.0.1 with the official
openai client and httpx, read ``x-seedx-replica`` to see who served each turn, and join the Ray
cluster as a driver only to ask a replica its pid. SIGTERM must stop the command cleanly (exit
0), and the fixture kills it and removes the temp dir even when a test fails. The replica-death
tests SIGKILL replicas, so they run last. The router's table is also tested alone, on a fake
clock.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

try:
    import httpx
    import openai
    import ray  # noqa: F401
    import yaml
    from ray import serve
except ImportError as exc:
    pytest.skip(f"ray[serve] is not installed ({exc}): pip install 'seedx-agent[ray]'",
                allow_module_level=True)

from seedx_agent.integrations.ray_serve import (APP_NAME, REPLICA_HEADER, ScaleOutArgs,
                                                replica_name)
from seedx_agent.integrations.ray_serve.router import SessionRouter
from seedx_agent.store import SessionStore

NEW_TOKENS = 6
PICTURE_TOKENS = 24  # the Nano's picture needs 16 placeholder tokens and a few around them
DOWN_FOR_S = 1.0  # far less than a replica's restart: the restarted one is live again at once
REPLICAS = [replica_name(k) for k in range(2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``seedx serve --serve-config`` with two Nano replicas; yields (base URL, store folder)."""
    work = tmp_path_factory.mktemp("scaled")
    store, port = work / "store", free_port()
    args = ScaleOutArgs(store=str(store), replicas=2, model="nano", gpus=False, torch_threads=1,
                        max_new_tokens=PICTURE_TOKENS, accept_timeout_s=5.0, down_for_s=DOWN_FOR_S)
    config = work / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "http_options": {"port": port},  # no host: the command must pick 127.0.0.1
        "applications": [{"name": APP_NAME, "route_prefix": "/",
                          "import_path": "seedx_agent.integrations.ray_serve:app_builder",
                          "args": args.model_dump(exclude_defaults=True)}]}))
    # Ray's unix socket paths must fit 107 bytes: a short folder of our own, not pytest's
    temp = tempfile.mkdtemp(prefix="seedx-ray-")
    env = {**os.environ, "RAY_TMPDIR": temp}
    log = work / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        command = subprocess.Popen([sys.executable, "-m", "seedx_agent.cli", "serve",
                                    "--serve-config", str(config)], env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    old_tmp = os.environ.get("RAY_TMPDIR")
    try:
        _wait_until_serving(url, command, log)
        os.environ["RAY_TMPDIR"] = temp
        ray.init(address="auto", logging_level="warning")  # to ask replicas their pids
        yield url, store
        ray.shutdown()
        command.send_signal(signal.SIGTERM)
        assert command.wait(60) == 0, \
            f"seedx serve did not stop cleanly:\n{log.read_text()[-3000:]}"
    finally:
        ray.shutdown()
        if command.poll() is None:  # setup or the clean stop failed: stop it anyway
            command.send_signal(signal.SIGTERM)
            try:
                command.wait(60)
            except subprocess.TimeoutExpired:
                command.kill()
                command.wait(30)
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(temp, ignore_errors=True)


def _wait_until_serving(url: str, command: subprocess.Popen, log, timeout_s: float = 150):
    """Until the command says it serves, which it does once every replica runs (an HTTP answer
    alone comes as soon as the first replica does)."""
    deadline = time.monotonic() + timeout_s
    while "seedx serve: the applications of" not in log.read_text():
        assert command.poll() is None, f"seedx serve exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"seedx serve did not start:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    assert httpx.get(url + "/v1/models", timeout=30).status_code == 200


@pytest.fixture
def client(cluster):
    return openai.OpenAI(base_url=cluster[0] + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def say(client, text: str, history: list[dict], session_id: str | None = None):
    """One turn; returns (reply text, session id, replica) and extends ``history``."""
    history.append({"role": "user", "content": text})
    extra = {} if session_id is None else {"session_id": session_id}
    raw = client.chat.completions.with_raw_response.create(
        model="nano", messages=history, max_tokens=NEW_TOKENS, extra_body=extra)
    reply = raw.parse()
    content = reply.choices[0].message.content
    history.append({"role": "assistant", "content": content})
    return content, reply.model_extra["session_id"], raw.headers[REPLICA_HEADER]


def stored_texts(store, session_id: str) -> list[str]:
    with SessionStore(store) as opened:
        return [t.request.text for t in opened.turns(session_id) if t.status == "done"]


# --- the router's table alone ---------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_moved_session_stays_put_when_its_old_replica_comes_back():
    clock = Clock()
    router = SessionRouter(3, down_for_s=30, clock=clock)
    ids = [f"{k:032x}" for k in range(60)]
    for k, session in enumerate(ids):
        router.learn(session, k % 3)
    router.mark_down(1)
    moved = {s: router.for_session(s) for s in ids if router.owner[s] == 1}
    assert moved and all(r in (0, 2) for r in moved.values())
    assert {s: router.for_session(s) for s in ids if s not in moved} == \
        {s: ids.index(s) % 3 for s in ids if s not in moved}  # only the dead one's sessions move
    clock.now += 31  # Ray restarted replica 1: it takes new work, its old sessions stay moved
    assert {s: router.for_session(s) for s in moved} == moved
    assert 1 in {router.for_new() for _ in range(3)}


def test_an_unknown_session_goes_to_the_same_replica_every_time_and_new_ones_spread():
    router = SessionRouter(4)
    session = "ab" * 16
    assert len({SessionRouter(4).for_session(session) for _ in range(5)}) == 1
    assert router.for_session(session) == SessionRouter(4).for_session(session)
    assert sorted(router.for_new() for _ in range(4)) == [0, 1, 2, 3]
    router.in_flight[:] = [2, 0, 1, 1]
    assert router.for_new() == 1
    with pytest.raises(ValueError, match="at least one replica"):
        SessionRouter(0)


# --- over Ray Serve ------------------------------------------------------------------------------

def test_a_session_keeps_its_replica_on_every_turn(client, cluster):
    history: list[dict] = []
    _, session, first = say(client, "hello there", history)
    assert first in REPLICAS
    for text in ("what is red?", "and blue?"):
        _, same, replica = say(client, text, history, session)
        assert (same, replica) == (session, first)
    with httpx.Client(base_url=cluster[0], timeout=60) as http:
        got = http.get(f"/v1/sessions/{session}")
        assert got.status_code == 200 and got.headers[REPLICA_HEADER] == first
        assert [m["content"] for m in got.json()["messages"]] == \
            [m["content"] for m in history]
    assert stored_texts(cluster[1], session) == ["hello there", "what is red?", "and blue?"]


def test_eight_concurrent_sessions_see_only_their_own_conversation(client, cluster):
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def talk(k: int) -> None:
        try:
            history: list[dict] = []
            start.wait(30)
            _, session, replica = say(client, f"apple {k}", history)
            _, again, replica_again = say(client, f"pear {k}", history, session)
            assert (again, replica_again) == (session, replica)
            results[k] = (session, replica, history)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=talk, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len({session for session, _, _ in results.values()}) == 8
    assert {replica for _, replica, _ in results.values()} == set(REPLICAS)  # both did work
    with httpx.Client(base_url=cluster[0], timeout=60) as http:
        for k, (session, replica, history) in results.items():
            assert stored_texts(cluster[1], session) == [f"apple {k}", f"pear {k}"]
            got = http.get(f"/v1/sessions/{session}").json()["messages"]
            assert [m["content"] for m in got] == [m["content"] for m in history]


def test_a_killed_replica_loses_no_stored_turn_and_its_session_moves_for_good(client, cluster):
    history: list[dict] = []
    _, session, owner = say(client, "one", history)
    say(client, "two", history, session)
    pid = serve.get_deployment_handle(owner, app_name=APP_NAME).pid.remote().result()
    os.kill(pid, signal.SIGKILL)
    _, same, moved = say(client, "three", history, session)  # resumed from the store
    assert same == session and moved != owner and moved in REPLICAS
    deadline = time.monotonic() + 60  # until Ray has restarted the killed replica
    while True:
        try:
            if serve.get_deployment_handle(owner, app_name=APP_NAME).pid.remote().result(
                    timeout_s=5) != pid:
                break
        except Exception:  # noqa: BLE001 - still restarting
            pass
        assert time.monotonic() < deadline, f"Ray did not restart {owner}"
        time.sleep(0.5)
    time.sleep(DOWN_FOR_S)
    _, _, after_restart = say(client, "four", history, session)
    assert after_restart == moved  # no flapping back to the restarted replica
    assert owner in {say(client, "new", [])[2] for _ in range(2)}  # which is live again
    assert stored_texts(cluster[1], session) == ["one", "two", "three", "four"]
    with httpx.Client(base_url=cluster[0], timeout=60) as http:
        got = http.get(f"/v1/sessions/{session}").json()["messages"]
    assert [m["content"] for m in got] == [m["content"] for m in history]


def test_a_stream_whose_replica_dies_ends_with_replica_lost_and_the_session_goes_on(client,
                                                                                    cluster):
    history: list[dict] = []
    _, session, owner = say(client, "hello", history)
    pid = serve.get_deployment_handle(owner, app_name=APP_NAME).pid.remote().result()
    body = {"model": "nano", "session_id": session, "stream": True, "force_image": True,
            "num_inference_steps": 400, "max_tokens": PICTURE_TOKENS,
            "messages": history + [{"role": "user", "content": "Draw a red circle."}]}
    events = []
    with httpx.Client(base_url=cluster[0], timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as streamed:
            assert streamed.status_code == 200 and streamed.headers[REPLICA_HEADER] == owner
            for line in streamed.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    if '"denoise"' in line and "killed" not in events:
                        os.kill(pid, signal.SIGKILL)  # mid-turn: the picture is being drawn
                        events.append("killed")
    assert "killed" in events and "[DONE]" not in events
    assert json.loads(events[-1])["error"]["code"] == "replica_lost"
    assert stored_texts(cluster[1], session) == ["hello"]  # the lost turn was never committed
    _, same, moved = say(client, "still there?", history, session)
    assert same == session and moved != owner
    assert stored_texts(cluster[1], session) == ["hello", "still there?"]
