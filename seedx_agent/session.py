"""A multi-turn conversation with SEED-X, in SEED-X-I's training format (reference §6).

One turn, top to bottom (``Session.turn``):

1. load the user's images (clear errors for bad ones; nothing is changed on failure);
2. pick the variant (an edit turn uses SEED-X-Edit; a skill may prefer one) and let the skill,
   if any, phrase the instruction;
3. chat turn: encode the images (any-res + ViT, cached by content), write the turn with the
   variant's template (``[INST] … [/INST]\\n``, later turns ``\\n[INST] … [/INST]\\n``), prefill
   only the new tokens on top of the kept KV cache, and stream the reply;
   edit turn: SEED-X-Edit was trained single-turn on one image, so it runs as its own
   single-turn prompt on the source image (1x1 grid) and renders with the stage-2
   de-tokenizer conditioned on that image; the conversation then continues with the result as
   a new image;
4. turn the reply's ids into typed parts (``reply_parser``), render its images, place its
   boxes on the right image, let the skills turn the parts into actions and run them;
5. store the turn (when a store is attached) and emit ``TurnDone``.

KV cache rules: each turn's EOS is cropped before the next turn is appended (training puts a
single EOS at the very end), prompts are encoded segment by segment as in training, and a
cancelled or failed turn is rolled back so the cache holds exactly the finished turns. When the
next turn would not fit the LLM's context window (or the session's cache budget), the oldest
turns leave the model's context — whole turns, oldest first, the remaining first turn re-written
with the first-turn template — and the user is told with a ``Notice``. They stay in the
transcript. A generated image stays in the context as the ``<img>`` run the model produced;
when a later turn asks about it (a turn with no images of its own), the runtime attaches it to
that turn as an input image, because the run's placeholder tokens carry no picture the LLM could
read back.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .reply_parser import ImageSlot, ParsedReply, ReplyParser
from .types import (BoxPart, DenoiseStep, ErrorEvent, Event, ImageDone, ImagePart, Notice,
                    Part, Provenance, TextPart, TurnDone)

if TYPE_CHECKING:
    from PIL import Image

    from .runtime import Runtime
    from .store import SessionStore, TurnRecord

logger = logging.getLogger(__name__)

DEFAULT_SEED = 42  # upstream's de-tokenizer default; every image records the seed it used


class TurnFailed(Exception):
    """Internal: ends a turn early with an error event; the session is left as it was."""

    def __init__(self, source: str, message: str):
        super().__init__(message)
        self.source = source


class Session:
    """One conversation. Create it with ``Runtime.open_session``.

    ``keep_cache=False`` re-prefills the whole history every turn (what a stateless server does;
    kept for comparison and benchmarks). ``cache_memory_limit`` (bytes) bounds this session's KV
    cache; past it, old turns leave the context as described in the module doc.
    """

    def __init__(self, runtime: "Runtime", *, store: "SessionStore | None" = None,
                 session_id: str | None = None, variant: str = "seed_x_i",
                 default_skill: str | None = None, title: str = "", keep_cache: bool = True,
                 cache_memory_limit: int | None = None, artifact_dir: str | Path | None = None,
                 max_new_tokens: int | None = None):
        from .store import SessionRecord

        self.runtime = runtime
        self.store = store
        self.keep_cache = keep_cache
        self.cache_memory_limit = cache_memory_limit
        self.max_new_tokens = max_new_tokens
        self._images: dict[str, Image.Image] = {}
        self._kv: dict[str, Any] = {}           # variant -> GenerationSession
        self._kv_turns: dict[str, list[int]] = {}  # variant -> history indices it covers
        self._kv_adapter: dict[str, str | None] = {}  # variant -> adapter its cache was made with
        self._context_start = 0                 # first turn still in the model's context
        self._unsaved: list[TurnRecord] = []      # turns a failed store write left behind
        if session_id is not None:
            if store is None:
                raise ValueError("resuming a session needs the store it was saved in")
            self.record = store.get_session(session_id)
            self.history: list[TurnRecord] = [t for t in store.turns(session_id)]
        else:
            runtime.variants.get(variant)  # fail early on an unknown variant
            record = SessionRecord(title=title, variant=variant, default_skill=default_skill,
                                   metadata={"model": runtime.name})
            if store is not None:
                record = store.create_session(title=title, variant=variant,
                                              default_skill=default_skill,
                                              metadata={"model": runtime.name})
            self.record = record
            self.history = []
        self.artifact_dir = Path(artifact_dir) if artifact_dir else (
            Path(store.root) / "artifacts" / self.record.id if store is not None else None)

    # --- public API -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def variant(self) -> str:
        return self.record.variant or self.runtime.stack.variant

    def turn(self, text: str = "", images: Sequence[Any] = (), *, skill: str | None = None,
             force_image: bool = False, edit: bool = False, variant: str | None = None,
             about_image: bool | None = None, max_new_tokens: int | None = None,
             seed: int | None = None, num_inference_steps: int | None = None,
             guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
             cancel: threading.Event | None = None,
             on_event: Callable[[Event], None] | None = None) -> Iterator[Event]:
        """Run one turn; yields its events, the last one ``TurnDone``. Lazy: nothing runs until
        iterated. ``images`` are paths, bytes or PIL images. ``on_event`` is called with every
        event too. Setting ``cancel`` interrupts the LLM and the denoiser; the turn is then
        rolled back and ends with ``finish_reason="cancelled"``."""
        options = dict(text=text, images=list(images), skill=skill, force_image=force_image,
                       edit=edit, variant=variant, about_image=about_image,
                       max_new_tokens=max_new_tokens, seed=seed,
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                       image_guidance_scale=image_guidance_scale, cancel=cancel or threading.Event())
        for event in self._turn(**options):
            if on_event is not None:
                on_event(event)
            yield event

    def ask(self, text: str = "", images: Sequence[Any] = (), **kwargs: Any) -> TurnDone:
        """``turn`` run to the end; returns its ``TurnDone``."""
        done = None
        for event in self.turn(text, images, **kwargs):
            done = event
        assert isinstance(done, TurnDone)
        return done

    def get_image(self, image_id: str) -> "Image.Image":
        if image_id not in self._images:
            if self.store is None:
                raise KeyError(f"image {image_id} is not in this session")
            self._images[image_id] = self.store.get_image(image_id)
        return self._images[image_id]

    def latest_image(self) -> ImagePart | None:
        for turn in reversed(self.history):
            images = [p for p in turn.parts if isinstance(p, ImagePart)]
            if images:
                return images[-1]
            if turn.request.image_ids:
                image_id = turn.request.image_ids[-1]
                im = self.get_image(image_id)
                return ImagePart(image_id=image_id, width=im.width, height=im.height)
        return None

    @property
    def cached_tokens(self) -> int:
        """Tokens in the KV cache of the session's variant (0 before the first turn)."""
        kv = self._kv.get(self.variant)
        return 0 if kv is None else len(kv)

    # --- one turn ---------------------------------------------------------------------------
    def _turn(self, **o: Any) -> Iterator[Event]:
        index = len(self.history)
        try:
            inputs = self._load_inputs(o["images"])
            variant = self._choose_variant(o)
            yield from self._run(index, variant, inputs, o)
        except TurnFailed as exc:
            yield ErrorEvent(source=exc.source, message=str(exc))
            yield TurnDone(turn_index=index, finish_reason="error")

    def _load_inputs(self, sources: list[Any]) -> list[ImagePart]:
        from core_models.image_io import ImageInputError, content_hash, load_image

        parts = []
        for i, source in enumerate(sources):
            try:
                image = load_image(source)
            except ImageInputError as exc:
                raise TurnFailed("input", f"image {i + 1}: {exc}") from None
            image_id = self.store.put_image(image) if self.store is not None else content_hash(image)
            self._images[image_id] = image
            parts.append(ImagePart(image_id=image_id, width=image.width, height=image.height))
        return parts

    def _choose_variant(self, o: dict[str, Any]):
        registry = self.runtime.variants
        if o["edit"]:
            if o["variant"] is not None:
                return registry.get(o["variant"])
            editors = [v for v in registry if v.single_image_edit]
            if not editors:
                raise TurnFailed("variant", "no edit variant is registered")
            return editors[0]
        if o["variant"] is not None:
            try:
                return registry.get(o["variant"])
            except KeyError as exc:
                raise TurnFailed("variant", str(exc)) from None
        skill_name = o["skill"] or self.record.default_skill
        if skill_name is not None:
            try:
                preferred = self.runtime.skill_host.get(skill_name).preferred_variant
            except Exception as exc:  # unknown skill: reported once, by the prompt step
                raise TurnFailed("skills", str(exc)) from None
            if preferred is not None and preferred in registry:
                return registry.get(preferred)
        return registry.get(self.variant)

    def _run(self, index: int, variant, inputs: list[ImagePart], o: dict[str, Any]) -> Iterator[Event]:
        from .skills import SkillContext, SkillReply, SkillRequest
        from .store import ModelContext, TurnRecord, TurnRequest

        edit = bool(o["edit"] or variant.single_image_edit)
        attached = list(inputs)
        latest = self.latest_image()
        if edit and not attached:
            if latest is None:
                raise TurnFailed("input", "nothing to edit: give an image or generate one first")
            attached = [latest]
        elif not attached and not o["force_image"] and latest is not None and latest.role != "input":
            if o["about_image"] is not False:
                attached = [latest]  # the model cannot read back its own <img> run
        if edit and len(attached) != 1:
            raise TurnFailed("input", f"an edit turn takes exactly one image, got {len(attached)}")

        request = SkillRequest(text=o["text"], images=tuple(attached), skill=o["skill"])
        try:
            instruction = self.runtime.skill_host.build_prompt(request, default_skill=self.record.default_skill)
        except Exception as exc:
            raise TurnFailed("skills", str(exc)) from None

        max_new = o["max_new_tokens"] or self.max_new_tokens or variant.max_new_tokens
        state: dict[str, Any] = {}
        events = (self._edit_reply if edit else self._chat_reply)(
            variant, instruction, attached, max_new, o, state)
        cancelled = False
        try:
            yield from events
        except _Cancelled:
            cancelled = True
        except TurnFailed:
            raise
        except Exception as exc:  # the model or the de-tokenizer failed: roll back, report
            logger.exception("turn %d failed", index)
            raise TurnFailed("model", f"{type(exc).__name__}: {exc}") from None

        parsed: ParsedReply | None = state.get("parsed")
        parts: list[Part] = list(inputs)
        warnings: list[str] = []
        if parsed is not None:
            parts += self._reply_parts(parsed, state.get("images", {}))
            warnings = list(parsed.warnings)
        reply = SkillReply(request=request, parts=tuple(parts))
        placed = iter(reply.placed_boxes())
        parts = [next(placed) if isinstance(p, BoxPart) else p for p in parts]
        on_parts = {w for p in parts for w in p.warnings}
        for warning in warnings:  # e.g. a dropped box: no part is left to carry its warning
            if warning not in on_parts:
                yield Notice(message=f"reply: {warning}")

        actions, errors = [], []
        if not cancelled and parsed is not None:
            context = SkillContext(artifact_dir=self._artifacts(index), get_image=self.get_image)
            for event in self.runtime.skill_host.dispatch(SkillReply(request=request, parts=tuple(parts)),
                                                          context, default_skill=self.record.default_skill):
                if isinstance(event, ErrorEvent):
                    errors.append(event)
                else:
                    actions.append(event.action)
                yield event

        finish = "cancelled" if cancelled else (parsed.finish_reason if parsed else "error")
        reply_ids = tuple(state.get("reply_ids", ()))
        record = TurnRecord(
            session_id=self.id, index=index,
            request=TurnRequest(text=o["text"], image_ids=tuple(p.image_id for p in inputs),
                                skill=o["skill"], force_image=o["force_image"], edit=edit,
                                variant=variant.name),
            parts=tuple(parts), actions=tuple(actions), errors=tuple(errors),
            finish_reason=finish, variant=variant.name,
            prompt_tokens=state.get("prompt_tokens", 0), reply_tokens=len(reply_ids),
            status="cancelled" if cancelled else "done",
            context=ModelContext(variant=variant.name, instruction=instruction,
                                 image_ids=tuple(p.image_id for p in attached),
                                 grids=tuple(variant.resolution_grids),
                                 image_first=variant.template.image_first, reply_ids=reply_ids,
                                 in_context=not edit and not cancelled))
        self.history.append(record)
        if self.store is not None:
            error = self._save(record)
            if error is not None:  # the turn still counts in memory; saving is retried next turn
                yield error
        for warning in warnings:
            logger.info("turn %d: %s", index, warning)
        yield TurnDone(turn_index=index, parts=tuple(parts), actions=tuple(actions),
                       finish_reason=finish)

    def _save(self, record: "TurnRecord") -> ErrorEvent | None:
        """Append ``record`` and any earlier turn a failed save left behind, in order."""
        from .plugins import pm
        from .store import StoreError

        self._unsaved.append(record)
        while self._unsaved:
            turn = self._unsaved[0]
            try:
                stored = self.store.append_turn(turn)
            except StoreError as exc:
                return ErrorEvent(source="store", message=f"turn {turn.index} is not saved yet "
                                                          f"(retried after the next turn): {exc}")
            self._unsaved.pop(0)
            self.history[turn.index] = stored
            pm.hook.turn_done(session=self.record, turn=stored)
        return None

    # --- the model's side of a turn -----------------------------------------------------------
    def _chat_reply(self, variant, instruction: str, images: list[ImagePart], max_new: int,
                    o: dict[str, Any], state: dict[str, Any]) -> Iterator[Event]:
        rt = self.runtime
        tok = rt.tokenizer
        with rt.lock("llm"):
            agent = rt.agent(variant.name)
            multi = variant.template.multi_turn
            encoded = [rt.encode_image(self.get_image(p.image_id), p.image_id, variant.resolution_grids)
                       for p in images]
            budget = self._token_budget(agent)
            text = self._instruction(variant, instruction, encoded)
            alone = 1 + len(tok.encode(variant.template.render(text, True)))
            if alone + max_new > budget:  # checked before evicting: a failed turn changes nothing
                raise TurnFailed("context", f"this turn needs {alone + max_new} tokens but the "
                                            f"context holds {budget}; use fewer or smaller images")
            while True:
                kv = self._kv_session(variant, agent, fresh=not multi)
                first = len(kv) == 0
                ids = ([tok.bos_token_id] if first else []) + tok.encode(
                    variant.template.render(text, first))
                if len(kv) + len(ids) + max_new <= budget or first:
                    break
                dropped = self._evict_oldest()
                yield Notice(message=f"turn {dropped} left the model's context (limit {budget} "
                                     "tokens); it stays in the transcript")
            mark = len(kv)
            state["prompt_tokens"] = len(ids)
            try:
                yield from self._generate(agent, kv, ids, encoded, max_new, o, state)
            except BaseException:
                kv.crop(mark)  # a cancelled or failed turn leaves the cache as it was
                raise
        # a stage-2 variant (try-on) draws conditioned on the turn's first image (the person)
        condition = images[0] if variant.detokenizer_stage == 2 and images else None
        try:
            yield from self._render_images(variant, stage=variant.detokenizer_stage,
                                           source=condition, o=o, state=state)
        except BaseException:
            kv.crop(mark)  # ... also when it is cancelled or fails while drawing its images
            raise
        self._kv_turns[variant.name] = self._kv_turns.get(variant.name, []) + [len(self.history)]

    def _edit_reply(self, variant, instruction: str, images: list[ImagePart], max_new: int,
                    o: dict[str, Any], state: dict[str, Any]) -> Iterator[Event]:
        rt = self.runtime
        tok = rt.tokenizer
        source = images[0]
        with rt.lock("llm"):
            agent = rt.agent(variant.name)
            encoded = [rt.encode_image(self.get_image(source.image_id), source.image_id,
                                       variant.resolution_grids)]
            ids = [tok.bos_token_id] + tok.encode(
                variant.template.render(self._instruction(variant, instruction, encoded), True))
            state["prompt_tokens"] = len(ids)
            kv = rt.new_generation(agent)
            yield from self._generate(agent, kv, ids, encoded, max_new, o, state)
        yield from self._render_images(variant, stage=2, source=source, o=o, state=state)

    def _generate(self, agent, kv, ids: list[int], encoded: list, max_new: int,
                  o: dict[str, Any], state: dict[str, Any]) -> Iterator[Event]:
        rt = self.runtime
        input_ids, embeds = self._embed(agent, ids, encoded)
        kv.prefill(input_ids, embeds)
        parser = ReplyParser(rt.tokenizer, num_img_tokens=rt.config.num_img_tokens)
        result = None
        for event in kv.stream(max_new, num_img_gen_tokens=rt.config.num_img_tokens,
                               force_image=o["force_image"], cancel=o["cancel"]):
            if event.token_id is not None:
                yield from parser.feed(event.token_id)
            if event.result is not None:
                result = event.result
        if result.stop_reason == "cancelled":
            raise _Cancelled()
        reason = {"eos": "eos", "length": "max_new_tokens"}[result.stop_reason]
        state["parsed"] = parser.finish(reason)
        reply_ids = list(result.generated_ids)
        if reply_ids and reply_ids[-1] == rt.tokenizer.eos_token_id:
            kv.crop(-1)  # the next turn is appended without this EOS, as in training
            reply_ids.pop()
        state["reply_ids"] = reply_ids
        state["features"] = {im.eoi_index: im.features.detach() for im in result.images}

    def _render_images(self, variant, *, stage: int, source: ImagePart | None,
                       o: dict[str, Any], state: dict[str, Any]) -> Iterator[Event]:
        parsed: ParsedReply = state["parsed"]
        rt = self.runtime
        seed = o["seed"] if o["seed"] is not None else DEFAULT_SEED
        steps = o["num_inference_steps"] or rt.default_num_inference_steps
        rendered: dict[int, ImagePart] = {}
        for slot in parsed.image_slots:
            features = state["features"].get(slot.end) if slot.complete else None
            if features is None:
                continue
            src_image = self.get_image(source.image_id) if source is not None else None
            image = yield from _streamed(lambda emit: rt.render(
                features, stage=stage, seed=seed, num_inference_steps=steps,
                guidance_scale=o["guidance_scale"], image_guidance_scale=o["image_guidance_scale"],
                source=src_image, interrupt=o["cancel"],
                on_step=lambda i, n: emit(DenoiseStep(index=slot.run_index, step=i, total=n))))
            if src_image is not None:  # SEED-X-Edit renders squares; give back the source's shape
                image = image.resize(_same_aspect(src_image.size, max(image.size)))
            image_id = self.store.put_image(image) if self.store is not None else _hash(image)
            self._images[image_id] = image
            part = ImagePart(
                image_id=image_id, width=image.width, height=image.height,
                role="edited" if source is not None else "generated",
                provenance=Provenance(
                    model=rt.name, variant=variant.name, seed=seed, steps=steps,
                    guidance=o["guidance_scale"],
                    image_guidance=o["image_guidance_scale"] if stage == 2 else None,
                    scheduler="EulerDiscreteScheduler", detokenizer_stage=stage,
                    weights_fingerprint=rt.weights_fingerprint,
                    parent_image=source.image_id if source is not None else None))
            rendered[slot.run_index] = part
            yield ImageDone(index=slot.run_index, image=part)
        state["images"] = rendered

    # --- helpers ----------------------------------------------------------------------------------
    def _reply_parts(self, parsed: ParsedReply, images: dict[int, ImagePart]) -> list[Part]:
        parts: list[Part] = []
        for part in parsed.parts:
            if isinstance(part, ImageSlot):
                if part.run_index in images:
                    parts.append(images[part.run_index])
                else:
                    parts.append(TextPart(text="", warnings=part.warnings + (
                        "an image was started but not produced",)))
            else:
                parts.append(part)
        return parts

    def _instruction(self, variant, text: str, encoded: list) -> str:
        return _with_images(text, encoded, self.runtime.config.num_img_tokens,
                            variant.template.image_first)

    def _embed(self, agent, ids: list[int], encoded: list):
        """Token ids as a tensor, and their embeddings with the images spliced in (or None)."""
        import torch

        tok = self.runtime.tokenizer
        device = agent.llm.get_input_embeddings().weight.device
        input_ids = torch.tensor([ids], device=device)
        if not encoded:
            return input_ids, None
        mask = agent.build_ids_cmp_mask(input_ids, tok.boi_token_id, tok.eoi_token_id,
                                        tok.bop_token_id, tok.eop_token_id)
        with torch.no_grad():
            embeds = agent.embed_inputs(input_ids, torch.cat([e.features for e in encoded]),
                                        torch.cat([e.patch_positions for e in encoded]).to(device),
                                        ids_cmp_mask=mask)
        return input_ids, embeds

    def _token_budget(self, agent) -> int:
        cfg = agent.llm.config
        budget = cfg.max_position_embeddings
        if self.cache_memory_limit is not None:
            param = next(agent.parameters())
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            per_token = (2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim
                         + cfg.hidden_size) * param.element_size()
            budget = min(budget, self.cache_memory_limit // per_token)
        return budget

    def _context_turns(self) -> list[int]:
        return [i for i, t in enumerate(self.history) if i >= self._context_start
                and t.context is not None and t.context.in_context]

    def _evict_oldest(self) -> int:
        turns = self._context_turns()
        dropped = turns[0]
        self._context_start = dropped + 1
        return dropped

    def _kv_session(self, variant, agent, *, fresh: bool):
        """The KV cache of ``variant``, holding exactly the turns in context (rebuilt if not)."""
        if fresh:  # a single-turn variant: every turn is a new conversation
            return self.runtime.new_generation(agent)
        wanted = self._context_turns()
        kv = self._kv.get(variant.name)
        adapter = self.runtime.active_adapter(agent)
        # reused only if it is on the agent now resident: after a residency swap it points at an
        # unloaded copy (decoding there would also keep that copy alive), so it is rebuilt; and
        # only if it was made with the adapter active now (adapter variants share one agent)
        if (self.keep_cache and kv is not None and self._kv_turns.get(variant.name) == wanted
                and getattr(kv, "model", agent) is agent
                and self._kv_adapter.get(variant.name) == adapter):
            return kv
        kv = self.runtime.new_generation(agent)
        self._replay(kv, agent, variant, wanted)
        self._kv[variant.name] = kv
        self._kv_turns[variant.name] = wanted
        self._kv_adapter[variant.name] = adapter
        return kv

    def _replay(self, kv, agent, variant, turns: list[int]) -> None:
        """Prefill finished turns (prompt + reply without EOS), exactly as they were written."""
        rt = self.runtime
        tok = rt.tokenizer
        for n, i in enumerate(turns):
            ctx = self.history[i].context
            encoded = [rt.encode_image(self.get_image(im), im, ctx.grids) for im in ctx.image_ids]
            text = _with_images(ctx.instruction, encoded, rt.config.num_img_tokens, ctx.image_first)
            ids = ([tok.bos_token_id] if n == 0 else []) + tok.encode(variant.template.render(text, n == 0))
            input_ids, embeds = self._embed(agent, ids, encoded)
            kv.prefill(input_ids, embeds)
            if ctx.reply_ids:
                kv.prefill(list(ctx.reply_ids))

    def _artifacts(self, index: int) -> Path:
        if self.artifact_dir is None:
            import tempfile
            self.artifact_dir = Path(tempfile.mkdtemp(prefix="seedx-artifacts-"))
        return self.artifact_dir / f"turn-{index:03d}"


class _Cancelled(Exception):
    pass


def _streamed(work: Callable[[Callable[[Event], None]], Any]) -> Iterator[Event]:
    """Run ``work(emit)`` on a worker thread, yielding what it emits; returns its result.

    The denoiser reports progress through a callback, but a turn is a generator: this bridges
    the two so that ``DenoiseStep`` events reach the caller while the image is being made.
    """
    from core_models.detokenizer import DenoisingInterrupted

    events: queue.SimpleQueue = queue.SimpleQueue()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work(events.put)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            outcome["error"] = exc
        finally:
            events.put(_streamed)

    threading.Thread(target=run, name="seedx-render", daemon=True).start()
    while (item := events.get()) is not _streamed:
        yield item
    if isinstance(outcome.get("error"), DenoisingInterrupted):
        raise _Cancelled()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _with_images(text: str, encoded: list, num_img_tokens: int, image_first: bool) -> str:
    """The instruction: each image's block of placeholder tokens before (or after) the text."""
    from core_models.any_res import image_token_block

    blocks = "".join(image_token_block(e.num_views, num_img_tokens) for e in encoded)
    return blocks + text if image_first else text + blocks


def _same_aspect(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _hash(image) -> str:
    from core_models.image_io import content_hash
    return content_hash(image)
