"""``seedx serve``: a real uvicorn on 127.0.0.1, spoken to with the official openai client and httpx.

Most cases run on the replay runtime (recorded replies through the real agent, store and
renderer); the image question answered with boxes runs on the Nano, and the SIGTERM case runs
the real ``seedx serve`` command in a subprocess. The bad-request cases (every limit, a remote
image, a contradicting history, a missing token, a path outside the artifacts) are part of the
reliability matrix (docs/reliability.md).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

try:
    import httpx
    import openai
    import uvicorn
    from fastapi import FastAPI  # noqa: F401
except ImportError as exc:  # under CI a missing extra is a failure with the fix, never a skip
    if os.environ.get("CI") == "true":
        raise ImportError(f"tests/test_server.py needs the [serve] extra and openai: "
                          f"pip install -e '.[dev]' ({exc})") from exc
    pytest.skip(f"the [serve] extra is not installed: {exc}", allow_module_level=True)

from PIL import Image

from seedx_agent.integrations.openai_server import Limits, ServerSettings, create_app
from seedx_agent import PromptTemplate, Variant
from seedx_agent.store import SessionStore
from seedx_agent.testing import Reply, ReplayGeneration, ReplayQueue, replay_runtime

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "examples" / "nano" / "scene.png"
FAST = {"num_inference_steps": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(app, host: str = "127.0.0.1"):
    """``app`` on a real uvicorn in a thread; yields its base URL (always via 127.0.0.1)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)


def data_url(path_or_image) -> str:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def question(text: str, *images) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text},
                                        *({"type": "image_url", "image_url": {"url": data_url(i)}}
                                          for i in images)]}


@pytest.fixture(scope="module")
def replay(rt):
    return replay_runtime(runtime=rt)


@pytest.fixture(scope="module")
def server(replay, tmp_path_factory):
    store = SessionStore(tmp_path_factory.mktemp("served-store"))
    app = create_app(replay, store, ServerSettings())
    with served(app) as url:
        yield url, store, app


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server[0], timeout=60) as c:
        yield c


# --- answers --------------------------------------------------------------------------------------

def test_an_image_question_on_the_nano_is_answered_with_boxes(nano, tmp_path):
    with served(create_app(nano, SessionStore(tmp_path))) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model="nano", messages=[question("Where is the blue square?", SCENE)],
            max_tokens=48, extra_body={"skill": "grounding"})
    message = reply.choices[0].message
    boxes = message.model_extra["boxes"]
    assert boxes, message.content
    x1, y1, x2, y2 = boxes[0]["box"]
    width, height = Image.open(SCENE).size
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    assert boxes[0]["image_index"] == 0 and boxes[0]["target"] == "input"
    assert f"{round(x1)}, {round(y1)}, {round(x2)}, {round(y2)}]" in message.content
    assert "<box_start>" not in message.content and "<loc-" not in message.content
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_a_forced_image_comes_back_as_a_data_url(client, replay):
    replay.replay.push(Reply().text("Here it is.").eos())
    reply = client.chat.completions.create(
        model="seed_x_i", messages=[{"role": "user", "content": "Draw a red circle."}],
        extra_body={"force_image": True, "seed": 3, **FAST})
    message = reply.choices[0].message
    [image] = message.model_extra["images"]
    assert image["type"] == "image_url" and picture(image["image_url"]["url"]).size[0] > 0
    assert message.content.startswith("[image 1]") and "Here it is." in message.content
    assert reply.model_extra["session_id"]


def test_images_are_generated_and_edited_as_b64_json(client, replay, tmp_path):
    replay.replay.push(Reply().eos())
    made = client.images.generate(prompt="a blue square", extra_body=FAST)
    drawn = Image.open(io.BytesIO(base64.b64decode(made.data[0].b64_json)))
    source = tmp_path / "source.png"
    drawn.save(source)
    replay.replay.push(Reply().image(seed=5).eos())
    with open(source, "rb") as f:  # the client's multipart upload
        edited = client.images.edit(image=f, prompt="make it green", extra_body=FAST)
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size[0] > 0


def test_a_streamed_reply_shows_text_denoising_and_the_picture(client, replay):
    replay.replay.push(Reply().text("A red circle:").image(seed=1).eos())
    chunks = list(client.chat.completions.create(
        model="seed_x_i", messages=[{"role": "user", "content": "Draw a red circle."}],
        stream=True, extra_body=FAST))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    progress = [c.model_extra["seedx"]["denoise"] for c in chunks
                if "denoise" in (c.model_extra.get("seedx") or {})]
    last = chunks[-1]
    assert "A red circle:" in text
    assert [p["step"] for p in progress] == [1, 2] or [p["step"] for p in progress] == [0, 1]
    assert {p["steps"] for p in progress} == {2}
    assert last.choices[0].finish_reason == "stop"
    assert picture(last.choices[0].delta.model_extra["images"][0]["image_url"]["url"])
    assert last.usage.completion_tokens > 0 and last.model_extra["seedx"]["session_id"]
    # what a client assembles from the stream is the history the session accepts back
    replay.replay.push(Reply().text("Done.").eos())
    follow_up = client.chat.completions.create(model="seed_x_i", messages=[
        {"role": "user", "content": "Draw a red circle."}, {"role": "assistant", "content": text},
        {"role": "user", "content": "Thanks."}],
        extra_body={"session_id": last.model_extra["seedx"]["session_id"]})
    assert follow_up.choices[0].message.content == "Done."


def test_raw_sse_is_the_openai_chunk_format(http, replay):
    replay.replay.push(Reply().text("ok").eos())
    with http.stream("POST", "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = "".join(response.iter_text())
    events = body.split("\n\n")
    assert all(e.startswith("data: ") for e in events if e)
    assert events[-2] == "data: [DONE]" and events[-1] == ""
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


# --- sessions -------------------------------------------------------------------------------------

def test_a_session_continues_across_requests_with_its_cache(client, http, replay, server):
    _url, store, app = server
    session_id = http.post("/v1/sessions", json={"title": "api"}).json()["id"]
    replay.replay.push(Reply().text("The square is").box(100, 100, 40, 40).text(".").eos(),
                       Reply().text("It is blue.").eos())
    first_q = question("Where is the square?", SCENE)
    first = client.chat.completions.create(model="seed_x_i", messages=[first_q],
                                           extra_body={"session_id": session_id})
    with app.state.live.use(session_id) as session:
        cached = session.cached_tokens
    history = [first_q, {"role": "assistant", "content": first.choices[0].message.content},
               {"role": "user", "content": "What colour is it?"}]
    second = client.chat.completions.create(model="seed_x_i", messages=history,
                                            extra_body={"session_id": session_id})
    assert second.choices[0].message.content == "It is blue."
    with app.state.live.use(session_id) as session:
        assert session.cached_tokens > cached > 0  # prefilled on top of the kept cache
    turns = store.turns(session_id)
    assert [t.request.text for t in turns] == ["Where is the square?", "What colour is it?"]
    assert first.choices[0].message.model_extra["boxes"][0]["label"]
    listed = http.get("/v1/sessions").json()["data"]
    assert session_id in [s["id"] for s in listed]
    fetched = http.get(f"/v1/sessions/{session_id}").json()
    assert [m["role"] for m in fetched["messages"]] == ["user", "assistant"] * 2
    assert fetched["messages"][1]["content"] == first.choices[0].message.content
    assert http.delete(f"/v1/sessions/{session_id}").json()["deleted"] is True
    assert http.get(f"/v1/sessions/{session_id}").status_code == 404


def test_a_contradicting_history_gets_409_and_leaves_the_session_alone(client, http, replay):
    session_id = http.post("/v1/sessions", json={}).json()["id"]
    replay.replay.push(Reply().text("Hello.").eos())
    client.chat.completions.create(model="seed_x_i", messages=[{"role": "user", "content": "Hi"}],
                                   extra_body={"session_id": session_id})
    for wrong in ([{"role": "user", "content": "Something else"},
                   {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "?"}],
                  [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Not what you said."},
                   {"role": "user", "content": "?"}]):
        with pytest.raises(openai.ConflictError) as caught:
            client.chat.completions.create(model="seed_x_i", messages=wrong,
                                           extra_body={"session_id": session_id})
        assert caught.value.body["code"] == "history_conflict"
        assert "contradict" in caught.value.body["message"]
    assert len(http.get(f"/v1/sessions/{session_id}").json()["messages"]) == 2


def test_a_named_skill_runs_and_its_artifacts_are_fetched_from_inside_its_folder(client, http,
                                                                                server, replay):
    _url, store, _app = server
    if "tiny_slides" not in replay.variants:  # the slides skill asks for a variant in that role
        replay.variants.register(Variant(name="tiny_slides", roles=("slides",),
                                         description="a slides variant of the tiny stack",
                                         template=PromptTemplate(multi_turn=False)))
    replay.replay.push(Reply().text("Title: Blue squares\n- A square has four sides.\n"
                                    "- Blue is a cool colour.\nLayout: title ")
                       .box(112, 27, 188, 27).text(", text ").box(64, 101, 94, 72)
                       .text(", picture ").box(166, 134, 64, 96).text(".").image(seed=3).eos())
    reply = client.chat.completions.create(
        model="nano", messages=[{"role": "user", "content": "Make a slide about blue squares."}],
        extra_body={"skill": "slides", **FAST})
    session_id, artifacts = reply.model_extra["session_id"], reply.model_extra["artifacts"]
    [deck] = [a for a in artifacts if a.endswith(".pptx")]
    fetched = http.get(f"/v1/sessions/{session_id}/artifacts/{deck}")
    assert fetched.status_code == 200 and fetched.content[:2] == b"PK"  # a zip: the .pptx
    (Path(store.root) / "secret.txt").write_text("not yours")
    codes = set()
    for escape in ("../../secret.txt", "..%2F..%2Fsecret.txt", "%2e%2e/%2e%2e/secret.txt",
                   "%2Fetc%2Fpasswd"):
        response = http.get(f"/v1/sessions/{session_id}/artifacts/{escape}")
        assert response.status_code in (400, 404) and b"not yours" not in response.content
        codes.add(response.json()["error"]["code"])
    assert "invalid_path" in codes  # the server's own check, past what the client normalizes
    assert http.get(f"/v1/sessions/{'0' * 32}/artifacts/{deck}").status_code == 404


def test_models_lists_the_variants_and_the_api_docs_show_the_extensions(client, http, replay):
    assert {m.id for m in client.models.list()} == set(replay.variants.names())
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]["properties"]
    for name in ("skill", "variant", "seed", "num_inference_steps", "guidance_scale",
                 "force_image", "session_id"):
        assert "SEED-X extension" in request[name]["description"], name
    assert "SEED-X extension" in schemas["ReplyMessage"]["properties"]["boxes"]["description"]


# --- many clients ---------------------------------------------------------------------------------

class EchoGeneration(ReplayGeneration):
    """Answers with the tag of the prompt's last question, so a reply shows whose prompt it read."""

    def stream(self, *args, **kwargs):
        tag = re.findall(r"client-\d+-turn-\d+", self.tokenizer.decode(self.token_ids))[-1]
        self.replies = ReplayQueue([Reply().text(f"answer {tag}").eos()])
        return super().stream(*args, **kwargs)


def test_eight_concurrent_clients_see_no_cross_talk(server, replay):
    url = server[0]
    replay.new_generation = lambda agent: EchoGeneration(agent, replay.tokenizer, replay.replay)
    errors, seen = [], {}

    def one_client(n: int) -> None:
        try:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            messages = [{"role": "user", "content": f"client-{n}-turn-1"}]
            first = client.chat.completions.create(model="seed_x_i", messages=messages)
            session_id = first.model_extra["session_id"]
            messages += [{"role": "assistant", "content": first.choices[0].message.content},
                         {"role": "user", "content": f"client-{n}-turn-2"}]
            second = client.chat.completions.create(model="seed_x_i", messages=messages,
                                                    extra_body={"session_id": session_id})
            seen[n] = (first.choices[0].message.content, second.choices[0].message.content)
        except Exception as exc:  # reported below, with the client
            errors.append((n, exc))

    try:
        threads = [threading.Thread(target=one_client, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        replay_runtime(runtime=replay)  # back to the plain queue
    assert not errors, errors
    assert seen == {n: (f"answer client-{n}-turn-1", f"answer client-{n}-turn-2") for n in range(8)}


# --- limits and tokens ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict(replay, tmp_path_factory):
    limits = Limits(max_body_bytes=200_000, max_image_pixels=64 * 64, max_new_tokens=128,
                    request_timeout_s=0.3)
    app = create_app(replay, SessionStore(tmp_path_factory.mktemp("strict")),
                     ServerSettings(limits=limits))
    with served(app) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def refused(call, status: int, code: str) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value.body
    assert caught.value.body["code"] == code and caught.value.body["message"]
    assert caught.value.body["type"]


def test_every_limit_gives_its_4xx(strict, replay):
    chat = strict.chat.completions.create
    big = Image.new("RGB", (65, 65), "white")
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": "x" * 300_000}]),
            413, "body_too_large")
    refused(lambda: chat(model="seed_x_i", messages=[question("What is this?", big)]),
            413, "image_too_large")
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": "hi"}],
                         max_tokens=129), 400, "max_tokens_too_large")
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}]),
        400, "remote_image_refused")
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}}]}]),
        400, "invalid_image")
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": "hi"}],
                         extra_body={"num_inference_steps": 0}), 400, "invalid_request")
    replay.replay.push(Reply().eos())  # a picture takes longer than the 0.3 s allowed
    refused(lambda: chat(model="seed_x_i", messages=[{"role": "user", "content": "draw"}],
                         extra_body={"force_image": True, "num_inference_steps": 200}),
            408, "request_timeout")
    replay_runtime(runtime=replay)  # whatever the cancelled turn left unplayed


def test_remote_images_are_fetched_only_when_the_operator_allows_them(replay, tmp_path):
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(SCENE.parent))
    pictures = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=pictures.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{pictures.server_address[1]}/{SCENE.name}"
    app = create_app(replay, SessionStore(tmp_path), ServerSettings(allow_remote_images=True))
    try:
        with served(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            replay.replay.push(Reply().text("A scene.").eos())
            reply = client.chat.completions.create(model="seed_x_i", messages=[{
                "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                            {"type": "image_url", "image_url": {"url": remote}}]}])
    finally:
        pictures.shutdown()
    assert reply.choices[0].message.content == "A scene."
    [turn] = SessionStore(tmp_path).turns(reply.model_extra["session_id"])
    assert turn.request.image_ids and turn.parts


def test_a_bad_request_does_not_harm_another_clients_session(client, http, replay):
    session_id = http.post("/v1/sessions", json={}).json()["id"]
    replay.replay.push(Reply().text("One.").eos(), Reply().text("Two.").eos())
    first = client.chat.completions.create(model="seed_x_i", messages=[
        {"role": "user", "content": "a"}], extra_body={"session_id": session_id})
    with pytest.raises(openai.BadRequestError):  # someone else's bad skill name
        client.chat.completions.create(model="seed_x_i", messages=[
            {"role": "user", "content": "b"}], extra_body={"skill": "no-such-skill"})
    second = client.chat.completions.create(model="seed_x_i", messages=[
        {"role": "user", "content": "a"}, {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "c"}], extra_body={"session_id": session_id})
    assert second.choices[0].message.content == "Two."


def test_beyond_loopback_a_token_is_required(replay, tmp_path):
    store = SessionStore(tmp_path)
    with pytest.raises(ValueError, match="token"):
        create_app(replay, store, ServerSettings(host="0.0.0.0"))
    app = create_app(replay, store, ServerSettings(host="0.0.0.0", token="s3cret"))
    with served(app, host="0.0.0.0") as url:
        stranger = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        anonymous = httpx.get(url + "/v1/models")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        allowed = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert allowed.models.list().data


def test_seedx_serve_refuses_to_listen_beyond_loopback_without_a_token():
    from click.testing import CliRunner

    from seedx_agent.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"], env={"SEEDX_SERVE_TOKEN": ""})
    assert result.exit_code == 2 and "token" in result.output


# --- shutdown -------------------------------------------------------------------------------------

def test_sigterm_during_a_streamed_reply_loses_no_stored_turn(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "seedx_agent.cli", "serve", "--model", "tiny",
                             "--store", str(tmp_path), "--port", str(port), "--max-new-tokens", "80"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                httpx.get(url + "/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "seedx serve did not start"
                time.sleep(0.2)
        lines, signalled = [], None
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "draw"}], "stream": True,
                "force_image": True, "num_inference_steps": 8, "max_tokens": 70}) as response:
            for line in filter(None, response.iter_lines()):
                lines.append(line)
                if "denoise" in line and signalled is None:
                    proc.send_signal(signal.SIGTERM)  # mid-stream: the picture is half drawn
                    signalled = len(lines)
        assert signalled and lines[-1] == "data: [DONE]", lines[-3:]
        assert any("denoise" in line for line in lines[signalled:])  # drawing went on after it
        # uvicorn finishes the open streams, then exits by the signal it was sent
        assert proc.wait(60) in (0, -signal.SIGTERM), proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    with SessionStore(tmp_path) as store:
        [record] = store.list_sessions()
        [turn] = store.turns(record.id)
    assert turn.status == "done" and turn.request.force_image
    final = json.loads(next(line for line in reversed(lines) if '"finish_reason": "stop"' in line
                            or '"finish_reason": "length"' in line)[6:])
    assert final["seedx"]["session_id"] == record.id
