"""The OpenAI-style HTTP API over one runtime and one session store: ``create_app``.

Model work never runs on the event loop: every request's turn runs in a worker thread, where the
runtime's per-device FIFO locks make requests for one device queue in arrival order, and reports
back through a queue (`_Relay`) that the loop reads. A request is validated (limits, history,
session) in that thread before anything is streamed, so a refused one gets its 4xx status even
when it asked for a stream. A turn that fails is refused too, after the session has recorded it
as failed (it never reaches the model's context), so one client's bad request leaves every other
session, and its own, as they were.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ...data_urls import png_base64, png_bytes, png_data_url
from ...turn_options import TurnOptions
from ...types import BoxFound, DenoiseStep, ImagePart, ImageStarted, TextDelta, TurnDone
from .auth import check_bind, check_request
from .conversation import (box_text, check_pixels, reply_message, user_turns)
from .limits import ApiError, Limits
from .schemas import (ChatCompletion, ChatCompletionRequest, Choice, ImageGenerationRequest,
                      SessionCreate, Usage, error_body)
from .sessions import LiveSessions, not_found

if TYPE_CHECKING:
    from ...runtime import Runtime
    from ...store import SessionStore

SESSION_HEADER = "x-seedx-session-id"
"""The session a chat turn ran in or POST /v1/sessions made, on the response's headers, so that a
proxy in front (the Ray Serve session router) learns it without reading the body or stream."""

SERVER_ERRORS = ("store", "model", "plugins", "context")
"""Turn-failure sources that are the server's fault (500); any other is the request's (400)."""


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    token: str | None = None
    allow_remote_images: bool = False
    limits: Limits = field(default_factory=Limits)
    workers: int = 16
    live_sessions: int = 32


def create_app(runtime: "Runtime", store: "SessionStore",
               settings: ServerSettings | None = None) -> "FastAPI":
    """The app serving ``runtime``, keeping sessions in ``store``. Refuses (ValueError) settings
    that would expose it beyond loopback without a token."""
    settings = settings or ServerSettings()
    check_bind(settings.host, settings.token)
    limits = settings.limits
    live = LiveSessions(runtime, store, capacity=settings.live_sessions,
                        max_new_tokens=limits.max_new_tokens)
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="seedx-serve")

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.shutdown(wait=True)  # graceful shutdown: running turns finish and are stored

    app = FastAPI(lifespan=lifespan, title="seedx-agent", version="1", description=(
        "SEED-X behind OpenAI's API. Extensions: `message.images`, `message.boxes`, "
        "`session_id`, and the per-request fields `skill`, `variant`, `seed`, "
        "`num_inference_steps`, `guidance_scale`, `force_image` (docs/server.md)."))
    app.state.runtime, app.state.store, app.state.live = runtime, store, live

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            if request.url.path.startswith("/v1/"):
                check_request(settings.token, request.headers.get("authorization"))
            length = request.headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    raise ApiError(400, "Content-Length is not a number", "invalid_request")
                limits.check_body(int(length))
            elif request.headers.get("transfer-encoding"):
                raise ApiError(411, "send a Content-Length: the body size is limited",
                               "length_required")
        except ApiError as exc:
            return _error(exc)
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(f"invalid request: {where}", "invalid_request_error",
                                       "invalid_request"), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error", str(exc.status_code)),
                            status_code=exc.status_code)

    async def in_thread(work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, work)

    # --- chat ---------------------------------------------------------------------------------
    @app.post("/v1/chat/completions", response_model=ChatCompletion,
              responses={200: {"description": "a completion, or with stream=true server-sent "
                               "chunks ending with `data: [DONE]`; denoising progress comes as "
                               "chunks with `seedx.denoise`"}})
    async def chat_completions(body: ChatCompletionRequest):
        relay = _Relay(asyncio.get_running_loop())
        cancel = threading.Event()
        task = asyncio.ensure_future(in_thread(lambda: _chat(body, relay, cancel)))
        first = await relay.get()
        if first[0] == "error":
            await task
            return _error(first[1])
        headers = {SESSION_HEADER: first[1]}
        if not body.stream:
            while first[0] != "done":
                first = await relay.get()
                if first[0] == "error":
                    await task
                    return _error(first[1])
            await task
            return JSONResponse(first[1], headers=headers)
        return StreamingResponse(_sse(relay, task, cancel), media_type="text/event-stream",
                                 headers=headers)

    def _chat(body: ChatCompletionRequest, relay: "_Relay", cancel: threading.Event) -> None:
        try:
            new_tokens = limits.new_tokens(body.max_completion_tokens or body.max_tokens)
            options = _turn_options(body, new_tokens, runtime.variants)
            if body.session_id is None:
                turns = _user_turns(body, [])
                session = live.create(variant=options.variant, skill=None)
                session_id = session.id
            else:
                session_id = body.session_id
            with live.use(session_id) as session:
                if body.session_id is not None:
                    turns = _user_turns(body, _stored(session))
                relay.put(("ready", session.id))
                timer = threading.Timer(limits.request_timeout_s, cancel.set)
                timer.start()
                try:
                    for k, turn in enumerate(turns):
                        done = _run_turn(session, turn, options, cancel,
                                         relay if k == len(turns) - 1 else None)
                finally:
                    timer.cancel()
                relay.put(("done", _completion(session, done)))
        except ApiError as exc:
            relay.put(("error", exc))
        except Exception as exc:  # a bug must still answer the request
            relay.put(("error", ApiError(500, f"internal error: {exc!r}", "internal_error",
                                         "server_error")))

    def _user_turns(body: ChatCompletionRequest, stored: list) -> list:
        def render(turn) -> str:
            return reply_message(turn.parts, list(turn.request.image_ids), lambda _: b"").content

        return user_turns(body.messages, stored, render, limits,
                          allow_remote=settings.allow_remote_images)

    def _run_turn(session, turn, options: TurnOptions, cancel: threading.Event,
                  relay: "_Relay | None") -> TurnDone:
        boxes = 0
        done = None
        for event in session.turn(turn.text, turn.images, options, cancel=cancel):
            if isinstance(event, TurnDone):
                done = event
            elif relay is None:
                continue
            elif isinstance(event, TextDelta):
                relay.put(("delta", {"content": event.text}))
            elif isinstance(event, BoxFound):
                boxes += 1
                relay.put(("delta", {"content": box_text(event.box, boxes)}))
            elif isinstance(event, ImageStarted):  # where the plain reply says [image N]
                relay.put(("delta", {"content": f"[image {event.index + 1}]"}))
            elif isinstance(event, DenoiseStep):
                relay.put(("seedx", {"denoise": {"image": event.index, "step": event.step,
                                                 "steps": event.total}}))
        assert done is not None
        if done.finish_reason == "cancelled":
            raise limits.timed_out()
        if done.errors:
            error = done.errors[0]
            server = error.source in SERVER_ERRORS
            raise ApiError(500 if server else 400, f"{error.source}: {error.message}",
                           "turn_failed", "server_error" if server else "invalid_request_error")
        return done

    def _completion(session, done: TurnDone) -> dict[str, Any]:
        record = session.history[-1]
        message = reply_message(done.parts, list(record.request.image_ids),
                                lambda image_id: _png(session, image_id))
        artifact_root = session.artifact_dir.resolve()
        artifacts = [str(Path(a).resolve().relative_to(artifact_root)) for a in done.artifacts
                     if Path(a).resolve().is_relative_to(artifact_root)]
        completion = ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
            model=record.variant or session.variant,
            choices=[Choice(message=message, finish_reason="length" if
                            done.finish_reason == "max_new_tokens" else "stop")],
            usage=Usage(prompt_tokens=record.prompt_tokens, completion_tokens=record.reply_tokens,
                        total_tokens=record.prompt_tokens + record.reply_tokens),
            session_id=session.id, artifacts=artifacts)
        return completion.model_dump(mode="json")

    # --- images -------------------------------------------------------------------------------
    @app.post("/v1/images/generations")
    async def generations(body: ImageGenerationRequest):
        def work():
            options = _turn_options(body, limits.new_tokens(None),
                                    runtime.variants).merged(force_image=True)
            return _pictures(body.prompt, [], options, body.n)

        return await in_thread(work)

    @app.post("/v1/images/edits")
    async def edits(image: UploadFile = File(..., description="the picture to edit"),
                    prompt: str = Form(...), n: int = Form(1, ge=1, le=4),
                    seed: int | None = Form(None), num_inference_steps: int | None = Form(None, ge=1),
                    guidance_scale: float | None = Form(None, ge=0)):
        data = await image.read(limits.max_body_bytes + 1)
        limits.check_body(len(data))
        check_pixels(data, limits, "the uploaded image")
        options = TurnOptions(edit=True, seed=seed, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, max_new_tokens=limits.max_new_tokens)
        return await in_thread(lambda: _pictures(prompt, [data], options, n))

    def _pictures(prompt: str, images: list[bytes], options: TurnOptions, n: int) -> dict:
        """``n`` pictures, each from its own store-less session (nothing to continue), with
        consecutive seeds so they differ."""
        data = []
        for k in range(n):
            opts = options if options.seed is None or k == 0 else options.merged(seed=options.seed + k)
            session = runtime.open_session(max_new_tokens=limits.max_new_tokens)
            cancel = threading.Event()
            timer = threading.Timer(limits.request_timeout_s, cancel.set)
            timer.start()
            try:
                done = session.ask(prompt, images, opts, cancel=cancel)
            finally:
                timer.cancel()
            if done.finish_reason == "cancelled":
                raise limits.timed_out()
            if done.errors:
                raise ApiError(400, done.errors[0].message, "turn_failed")
            made = [p for p in done.parts if isinstance(p, ImagePart) and p.role != "input"]
            if not made:
                raise ApiError(500, "the model answered without a picture", "no_image", "server_error")
            data.append({"b64_json": png_base64(_png(session, made[-1].image_id)),
                         "revised_prompt": prompt})
        return {"created": int(time.time()), "data": data}

    # --- models and sessions ------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                            "owned_by": runtime.name}
                                           for name in runtime.variants.names()]}

    @app.post("/v1/sessions", status_code=201)
    async def create_session(body: SessionCreate):
        session = await in_thread(lambda: live.create(title=body.title, variant=body.variant,
                                                      skill=body.skill))
        return JSONResponse(_session_json(session.record), status_code=201,
                            headers={SESSION_HEADER: session.id})

    @app.get("/v1/sessions")
    async def list_sessions():
        records = await in_thread(store.list_sessions)
        return {"object": "list", "data": [_session_json(r) for r in records]}

    @app.get("/v1/sessions/{session_id}")
    async def get_session(session_id: str):
        def work():
            with live.use(session_id) as session:
                return {**_session_json(session.record), "messages": _messages(session)}

        return await in_thread(work)

    @app.delete("/v1/sessions/{session_id}")
    async def delete_session(session_id: str):
        def work():
            with live.use(session_id):
                live.forget(session_id)
                store.delete_session(session_id)

        await in_thread(work)
        return {"id": session_id, "object": "session", "deleted": True}

    @app.get("/v1/sessions/{session_id}/artifacts/{path:path}")
    async def artifact(session_id: str, path: str):
        if not _is_session_id(session_id) or not await in_thread(lambda: _exists(store, session_id)):
            raise not_found(session_id)
        root = (Path(store.root) / "artifacts" / session_id).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root) or target == root:
            raise ApiError(400, f"{path!r} is outside the session's artifacts", "invalid_path")
        if not target.is_file():
            raise ApiError(404, f"the session has no artifact {path!r}", "artifact_not_found")
        return FileResponse(target)

    return app


# --- helpers -------------------------------------------------------------------------------------

def _turn_options(body, new_tokens: int, variants) -> TurnOptions:
    """The request's extension fields as turn options; ``model`` names a variant when it is one
    (clients must send some model name, often the served model's)."""
    fields = {name: getattr(body, name) for name in ("skill", "variant", "seed",
                                                     "num_inference_steps", "guidance_scale")
              if getattr(body, name) is not None}
    if getattr(body, "force_image", False):
        fields["force_image"] = True
    model = getattr(body, "model", None)
    if "variant" not in fields and model is not None and model in variants:
        fields["variant"] = model
    return TurnOptions(max_new_tokens=new_tokens, **fields)


def _stored(session) -> list:
    """The turns a client's history must repeat: finished ones, not failed, cancelled or reverts."""
    return [t for t in session.history if t.status == "done" and t.request.revert_to is None]


def _messages(session) -> list[dict[str, Any]]:
    """The stored conversation as OpenAI messages, ready to be sent back with a new one."""
    out = []
    for turn in _stored(session):
        images = [{"type": "image_url", "image_url": {"url": png_data_url(_png(session, i))}}
                  for i in turn.request.image_ids]
        out.append({"role": "user", "content": [{"type": "text", "text": turn.request.text},
                                                *images] if images else turn.request.text})
        reply = reply_message(turn.parts, list(turn.request.image_ids),
                              lambda i: _png(session, i))
        out.append({"role": "assistant", **reply.model_dump(mode="json", exclude={"role"})})
    return out


def _session_json(record) -> dict[str, Any]:
    return {"id": record.id, "object": "session", "title": record.title,
            "variant": record.variant, "skill": record.default_skill,
            "created_at": record.created_at.isoformat()}


def _exists(store, session_id: str) -> bool:
    from ...store import SessionNotFound

    try:
        store.get_session(session_id)
    except SessionNotFound:
        return False
    return True


def _is_session_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)


def _png(session, image_id: str) -> bytes:
    return png_bytes(session.get_image(image_id))


def _error(exc: ApiError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.type, exc.code), status_code=exc.status)


class _Relay:
    """Hands a worker thread's items to the event loop without blocking either."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def put(self, item: tuple[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    async def get(self) -> tuple[str, Any]:
        return await self.queue.get()


async def _sse(relay: _Relay, task: "asyncio.Future", cancel: threading.Event) -> AsyncIterator[str]:
    """The turn as OpenAI chunks; the last carries the pictures, boxes, usage and session."""
    chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
        body = {"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                "model": extra.pop("model", ""), "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(body)}\n\n"

    finished = False
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await relay.get()
            if kind == "delta":
                yield chunk(value)
            elif kind == "seedx":
                yield chunk({}, seedx=value)
            elif kind == "error":
                yield f"data: {json.dumps(error_body(value.message, value.type, value.code))}\n\n"
                break
            elif kind == "done":
                message = value["choices"][0]["message"]
                yield chunk({"images": message["images"], "boxes": message["boxes"]},
                            value["choices"][0]["finish_reason"], model=value["model"],
                            usage=value["usage"], seedx={"session_id": value["session_id"],
                                                         "artifacts": value["artifacts"]})
                break
        finished = True
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away: stop the turn, which the session rolls back
            cancel.set()
        await task
