"""`ChatSeedX`: SEED-X as a LangChain chat model that answers with text, pictures and boxes.

Each call reads LangChain's messages as one SEED-X conversation (`messages`), finds the
`Session` this instance kept for that exact history (`history_cache`) or builds one from the
history, runs the last human message as one turn, and streams the turn's events back as
`AIMessageChunk`s: text as it is decoded, each picture as a standard image block (base64 PNG)
when it is drawn, the boxes (placed on their picture, in pixels) as ``non_standard`` blocks at
the end, and denoising progress as the custom event ``seedx_denoise``. The session is then kept
under the new history, so the next call, which sends all of it again, only prefills its new
message.

What is not supported, said plainly: native tool calling and structured output (SEED-X was not
trained for either; the skills are offered as LangChain tools instead, `tools.py`), sampling
(SEED-X decodes greedily, so ``temperature`` may only be 0), and remote image URLs (nothing is
fetched). ``stop`` sequences end the reply where one appears; such a cut reply is not kept.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from typing import Any, AsyncIterator, Iterator, Sequence

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.callbacks.manager import (AsyncCallbackManager, CallbackManager,
                                              adispatch_custom_event, dispatch_custom_event)
from langchain_core.language_models.chat_models import (BaseChatModel, agenerate_from_stream,
                                                        generate_from_stream)
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.content import create_image_block
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import (ensure_config, get_async_callback_manager_for_config,
                                             get_callback_manager_for_config)
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from ...data_urls import png_base64, png_bytes
from .history_cache import HistoryCache, history_key
from .messages import Item, Message, read_conversation

DENOISE_EVENT = "seedx_denoise"
"""Name of the custom event each denoising step is dispatched as (``astream_events`` shows it)."""

TURN_OPTIONS = ("seed", "num_inference_steps", "guidance_scale", "image_guidance_scale",
                "skill", "variant", "force_image", "edit", "max_new_tokens")
"""Per-call keyword arguments that become the turn's `seedx_agent.TurnOptions`."""


class ChatSeedX(BaseChatModel):
    """A SEED-X runtime as a LangChain chat model (module doc).

    ``ChatSeedX(runtime=rt)`` wraps a loaded runtime; ``ChatSeedX(model="nano")`` or
    ``ChatSeedX.from_pretrained("nano")`` loads one on first use. The rendering fields are
    defaults for every call; a call's keyword arguments (``seed=``, ``num_inference_steps=``,
    ``skill=``, ``force_image=True`` …) override them. ``keep_cache=False`` rebuilds the
    conversation on every call (what the benchmark compares against).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(default="nano", description="preset name or SEED-X model folder")
    runtime: Any = Field(default=None, exclude=True, description="a loaded seedx_agent Runtime")
    variant: str | None = None
    skill: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_tokens: int | None = Field(default=None, ge=1, description="the reply's token limit")
    stop: list[str] | None = None
    temperature: float | None = Field(default=None, description="only 0: SEED-X decodes greedily")
    timeout: float | None = Field(default=None, gt=0, description="seconds before a call is "
                                                                   "cancelled")
    max_retries: int = Field(default=0, ge=0, description="accepted for compatibility; a local "
                                                          "model has nothing to retry")
    keep_cache: bool = True
    cache_max_entries: int = Field(default=8, ge=1)
    cache_max_bytes: int = Field(default=2 << 30, ge=0)

    _cache: HistoryCache = PrivateAttr()
    _load_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("temperature")
    @classmethod
    def _greedy_only(cls, value: float | None) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError("ChatSeedX decodes greedily: temperature must be 0 or unset")
        return value

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self._cache = HistoryCache(max_entries=self.cache_max_entries,
                                   max_bytes=self.cache_max_bytes,
                                   size_of=lambda session: session.cache_bytes())

    @classmethod
    def from_pretrained(cls, name_or_path: str = "nano", **kwargs: Any) -> "ChatSeedX":
        """Load the runtime now (``seedx_agent.from_pretrained``) and wrap it."""
        import seedx_agent

        return cls(model=str(name_or_path), runtime=seedx_agent.from_pretrained(name_or_path),
                   **kwargs)

    # --- what LangChain asks of a chat model ------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "seedx"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "variant": self.variant}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "seedx"
        return params

    @property
    def history_cache(self) -> HistoryCache:
        """The conversations this instance kept (never shared with another instance)."""
        return self._cache

    def get_runtime(self) -> Any:
        """The runtime, loaded on first use when the model was given by name."""
        with self._load_lock:
            if self.runtime is None:
                import seedx_agent

                self.runtime = seedx_agent.from_pretrained(self.model)
            return self.runtime

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None,
                         **kwargs: Any) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        cancel = threading.Event()
        try:
            for item in self._turn(messages, stop, cancel, **kwargs):
                if isinstance(item, ChatGenerationChunk):
                    if run_manager is not None and isinstance(item.message.content, str):
                        run_manager.on_llm_new_token(item.message.content, chunk=item)
                    yield item
                elif (config := _event_config(run_manager)) is not None:
                    dispatch_custom_event(DENOISE_EVENT, item, config=config)
        finally:
            cancel.set()  # a caller that stopped reading ends the turn

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        """The turn runs on a worker thread; its chunks and events cross over through an
        asyncio queue, so the event loop keeps running other work meanwhile."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        finished = object()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed: nobody is listening any more
                cancel.set()

        def work() -> None:
            try:
                for item in self._turn(messages, stop, cancel, **kwargs):
                    hand_over(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised on the loop's side
                hand_over(_Failure(exc))
            finally:
                hand_over(finished)

        threading.Thread(target=work, name="seedx-langchain", daemon=True).start()
        try:
            while (item := await queue.get()) is not finished:
                if isinstance(item, _Failure):
                    raise item.error
                if isinstance(item, ChatGenerationChunk):
                    if run_manager is not None and isinstance(item.message.content, str):
                        await run_manager.on_llm_new_token(item.message.content, chunk=item)
                    yield item
                elif (config := _event_config(run_manager, asynchronous=True)) is not None:
                    await adispatch_custom_event(DENOISE_EVENT, item, config=config)
        finally:
            cancel.set()

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        config = _with_run_id(config)
        token = _STREAM_CALL.set((config, config["run_id"]))
        try:
            yield from super().stream(input, config, **kwargs)
        finally:
            _reset(token)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        config = _with_run_id(config)
        token = _STREAM_CALL.set((config, config["run_id"]))
        try:
            async for chunk in super().astream(input, config, **kwargs):
                yield chunk
        finally:
            _reset(token)

    # --- one call: one SEED-X turn ----------------------------------------------------------------
    def _turn(self, messages: Sequence[BaseMessage], stop: list[str] | None,
              cancel: threading.Event, **kwargs: Any) -> Iterator[ChatGenerationChunk | dict]:
        """The chunks of the reply, with denoising progress (dicts) between them."""
        from seedx_agent import DenoiseStep, ImageDone, TextDelta, TurnDone

        options = self._options(kwargs)
        conversation = read_conversation(messages)
        history, last = conversation[:-1], conversation[-1]
        old_key = history_key(history)
        session, kept = self._session_for(old_key, history)
        variant = options.variant or session.variant
        cache_read = session.kept_tokens(variant) if kept and session.keep_cache else 0
        stops = stop if stop is not None else self.stop
        cutter = _StopCutter(stops or [], cancel)
        timer = threading.Timer(self.timeout, cancel.set) if self.timeout else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        reply: list[Item] = []
        done = None
        try:
            for event in session.turn(last.text, last.images, options, cancel=cancel):
                if isinstance(event, TextDelta):
                    text = cutter.feed(event.text)
                    if text:
                        reply.append(Item("text", text=text))
                        yield ChatGenerationChunk(message=AIMessageChunk(content=text))
                elif isinstance(event, DenoiseStep):
                    yield {"image": event.index, "step": event.step, "total": event.total}
                elif isinstance(event, ImageDone):
                    part = event.image
                    reply.append(Item("image", image_id=part.image_id))
                    yield ChatGenerationChunk(message=AIMessageChunk(
                        content=[self._image_block(session, part)]))
                elif isinstance(event, TurnDone):
                    done = event
        finally:
            if timer is not None:
                timer.cancel()
        rest = cutter.flush()
        if rest:
            reply.append(Item("text", text=rest))
            yield ChatGenerationChunk(message=AIMessageChunk(content=rest))
        if done is None or done.finish_reason == "error":
            self._keep(old_key, session)  # a failed turn stays outside the model's context
            reasons = "; ".join(e.message for e in done.errors) if done else "no reply"
            raise RuntimeError(f"SEED-X turn failed: {reasons}")
        boxes = [p for p in done.parts if p.type == "box"]
        record = session.history[-1]
        if done.finish_reason == "cancelled":
            self._keep(old_key, session)  # rolled back: the session is at the old history again
            finish = "stop" if cutter.cut else "cancelled"
        else:
            reply += [Item("box", box={"bins": list(b.bins), "phrase": b.phrase}) for b in boxes]
            self._keep(history_key([*history, last, Message("assistant", _merged(reply))]), session)
            finish = "length" if done.finish_reason == "max_new_tokens" else "stop"
        total = session.kept_tokens(record.variant) if done.finish_reason != "cancelled" else 0
        output = record.reply_tokens
        prompt = max(total - output, cache_read + record.prompt_tokens)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content=[_box_block(b) for b in boxes] or "",
            usage_metadata={"input_tokens": prompt, "output_tokens": output,
                            "total_tokens": prompt + output,
                            "input_token_details": {"cache_read": cache_read}},
            response_metadata={"model_name": record.variant, "finish_reason": finish,
                               "seedx_finish_reason": done.finish_reason,
                               "model_provider": "seedx"},
            chunk_position="last"))

    def _options(self, kwargs: dict[str, Any]):
        from seedx_agent import TurnOptions

        unknown = set(kwargs) - set(TURN_OPTIONS) - {"model"}
        if unknown:
            raise TypeError(f"ChatSeedX does not take {sorted(unknown)}; per-call options are "
                            f"{', '.join(TURN_OPTIONS)}")
        if kwargs.get("model") not in (None, self.model):
            raise ValueError("ChatSeedX runs one loaded model; pick a variant with variant=")
        values = {"variant": self.variant, "skill": self.skill, "seed": self.seed,
                  "num_inference_steps": self.num_inference_steps,
                  "guidance_scale": self.guidance_scale, "max_new_tokens": self.max_tokens}
        values.update({k: v for k, v in kwargs.items() if k != "model"})
        return TurnOptions(**{k: v for k, v in values.items() if v is not None})

    def _session_for(self, key: str, history: list[Message]) -> tuple[Any, bool]:
        """The session kept for this exact history, or a new one brought to it."""
        session = self._cache.take(key) if self.keep_cache else None
        if session is not None:
            return session, True
        runtime = self.get_runtime()
        session = runtime.open_session(variant=self.variant, keep_cache=self.keep_cache)
        for user, assistant in zip(history[0::2], history[1::2]):
            session.adopt_exchange(user.text, user.images, _reply_ids(runtime, assistant),
                                   assistant.images)
        return session, False

    def _keep(self, key: str, session: Any) -> None:
        if self.keep_cache:
            self._cache.put(key, session)

    @staticmethod
    def _image_block(session: Any, part: Any) -> dict[str, Any]:
        return create_image_block(base64=png_base64(png_bytes(session.get_image(part.image_id))),
                                  mime_type="image/png", id=f"seedx-image-{part.image_id[:16]}",
                                  image_id=part.image_id, width=part.width,
                                  height=part.height, role=part.role)


_STREAM_CALL: contextvars.ContextVar[tuple[dict, Any] | None] = contextvars.ContextVar(
    "seedx_langchain_stream_call", default=None)
"""The config and run id of the ``stream`` / ``astream`` call in progress: LangChain does not
hand ``_stream`` / ``_astream`` their run manager, and custom events need the run."""


def _event_config(run_manager: Any, *, asynchronous: bool = False) -> dict[str, Any] | None:
    """A config whose parent run is this call's run, so that a custom event dispatched with it
    is attributed to the call (``astream_events`` shows it under the chat model)."""
    kind = AsyncCallbackManager if asynchronous else CallbackManager
    if run_manager is not None:
        return {"callbacks": kind(handlers=run_manager.handlers,
                                  inheritable_handlers=run_manager.inheritable_handlers,
                                  parent_run_id=run_manager.run_id, tags=run_manager.tags,
                                  metadata=run_manager.metadata)}
    call = _STREAM_CALL.get()
    if call is None:
        return None
    config, run_id = call
    manager = (get_async_callback_manager_for_config if asynchronous
               else get_callback_manager_for_config)(config)
    return {"callbacks": kind(handlers=manager.handlers,
                              inheritable_handlers=manager.inheritable_handlers,
                              parent_run_id=run_id, tags=manager.tags, metadata=manager.metadata)}


def _with_run_id(config: RunnableConfig | None) -> RunnableConfig:
    """``config`` with the run id the call will have, chosen now so events can name it."""
    config = ensure_config(config)
    if config.get("run_id") is None:
        config["run_id"] = uuid.uuid4()
    return config


def _reset(token: contextvars.Token) -> None:
    try:
        _STREAM_CALL.reset(token)
    except ValueError:  # a generator closed from another context: its context goes with it
        pass


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _StopCutter:
    """Passes text through until a stop sequence appears, holding back just enough to see one
    that spans two deltas; then cancels the turn."""

    def __init__(self, stops: list[str], cancel: threading.Event):
        self.stops = [s for s in stops if s]
        self.cancel = cancel
        self.held = ""
        self.cut = False

    def feed(self, text: str) -> str:
        if self.cut:
            return ""
        if not self.stops:
            return text
        self.held += text
        hits = [self.held.find(s) for s in self.stops if s in self.held]
        if hits:
            self.cut = True
            self.cancel.set()
            out, self.held = self.held[:min(hits)], ""
            return out
        keep = max(len(s) for s in self.stops) - 1
        out, self.held = (self.held[:-keep], self.held[-keep:]) if keep else (self.held, "")
        return out

    def flush(self) -> str:
        out, self.held = ("" if self.cut else self.held), ""
        return out


def _box_block(box: Any) -> dict[str, Any]:
    """A box as a structured block: its label, its pixel box and the picture it is on."""
    value = box.model_dump(mode="json")
    value.update(seedx="box", label=box.phrase,
                 box_xyxy=list(box.pixel_xyxy) if box.pixel_xyxy else None,
                 image_id=box.target_image)
    return {"type": "non_standard", "value": value}


def _merged(items: list[Item]) -> list[Item]:
    out: list[Item] = []
    for item in items:
        if item.kind == "text" and out and out[-1].kind == "text":
            out[-1] = Item("text", text=out[-1].text + item.text)
        elif item.kind != "text" or item.text:
            out.append(item)
    return out


def _reply_ids(runtime: Any, message: Message) -> list[int]:
    """An assistant message as the ids SEED-X would have written: text, ``<img>`` runs,
    boxes; approximate where the original ids are unknown (module doc of `messages`)."""
    tok = runtime.tokenizer
    q = runtime.config.num_img_tokens
    ids: list[int] = []
    for item in message.items:
        if item.kind == "text":
            ids += tok.encode(item.text)
        elif item.kind == "image":
            ids += [tok.boi_token_id, *list(tok.img_token_ids)[:q], tok.eoi_token_id]
        else:
            ids += [tok.box_start_token_id, *(tok.loc_token_ids[b] for b in item.box["bins"]),
                    tok.box_end_token_id]
    return ids
