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

A turn that fails (a bad image, an empty turn, an unknown skill or variant, the model raising,
a picture the store cannot save) ends with an ``ErrorEvent`` and a ``TurnDone`` whose ``errors``
say why; it is recorded in ``history`` and in the store with ``status="failed"``, and never sent
to the model again. A turn the store cannot save (a full disk, a locked database) still counts:
it is reported with an ``ErrorEvent`` (source ``store``) and saved with the next turn that can
be. An earlier turn whose picture has gone from the store leaves the model's context, with a
``Notice``, instead of breaking every later turn.

What a turn may set is one `TurnOptions` (``seed``, ``num_inference_steps``, ``guidance_scale``,
``edit``, ``skill``, …), given as keywords or as ``options=``; unset rendering values come from
the model (``runtime.render_defaults``), and the resolved options travel unchanged to
``Runtime.render`` and the de-tokenizer.

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
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from .context_window import ContextWindow, with_images
from .pause_points import pause_point
from .reply_parser import ImageSlot, ParsedReply, ReplyParser
from .steps import run_steps
from .streaming import Cancelled, streamed
from .turn_options import TurnOptions
from .types import (ActionEvent, BoxPart, DenoiseStep, ErrorEvent, Event, ImageDone, ImagePart,
                    Notice, Part, Provenance, TextPart, TurnDone)

if TYPE_CHECKING:
    from PIL import Image

    from .store import SessionStore, TurnRecord
    from .versions import Version

logger = logging.getLogger(__name__)

class TurnFailed(Exception):
    """Internal: ends a turn early with an error event; the session is left as it was."""

    def __init__(self, source: str, message: str):
        super().__init__(message)
        self.source = source


class Session(ContextWindow):
    """One conversation. Create it with ``Runtime.open_session`` (``runtime`` is the
    `seedx_agent.runtime.Runtime` it runs on; the session only uses its public methods).

    ``keep_cache=False`` re-prefills the whole history every turn (what a stateless server does;
    kept for comparison and benchmarks). ``cache_memory_limit`` (bytes) bounds this session's KV
    cache; past it, old turns leave the context as described in the module doc.
    """

    def __init__(self, runtime: Any, *, store: "SessionStore | None" = None,
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
        self._unreadable: set[int] = set()      # turns whose pictures the store lost
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
        if artifact_dir is not None:
            self.artifact_dir = Path(artifact_dir)
        elif store is not None:
            self.artifact_dir = Path(store.root) / "artifacts" / self.record.id
        else:
            from .user_dir import user_dir
            self.artifact_dir = user_dir() / "artifacts" / self.record.id

    # --- public API -------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.record.id

    @property
    def variant(self) -> str:
        return self.record.variant or self.runtime.default_variant

    def turn(self, text: str = "", images: Sequence[Any] = (), options: TurnOptions | None = None,
             *, cancel: threading.Event | None = None,
             on_event: Callable[[Event], None] | None = None, **fields: Any) -> Iterator[Event]:
        """Run one turn; yields its events, the last one ``TurnDone``. Lazy: nothing runs until
        iterated. ``images`` are paths, bytes or PIL images, or a mapping from role to image
        (``{"person": a, "garment": b}``, the same as ``image_roles=``). What the turn sets is
        ``options`` and/or the same `TurnOptions` fields as keywords (``seed=7``,
        ``guidance_scale=5``, ``edit=True``, ``skill="grounding"``); a keyword overrides
        ``options``. ``on_event`` is called with every event too. Setting ``cancel`` interrupts
        the LLM and the denoiser; the turn is then rolled back and ends with
        ``finish_reason="cancelled"``. An image may also be ``"version:N"``, a `Version` or an
        `ImagePart` of this session. ``steps=N`` runs N recorded turns, each ending with its own
        ``TurnDone``, each reading the picture the one before drew (`seedx_agent.steps`)."""
        if isinstance(images, (TurnOptions, str)):
            raise TypeError("images must be a sequence of images; pass options as options=…")
        opts = options if options is not None else TurnOptions()
        if isinstance(images, Mapping):  # images named by role
            if "image_roles" in fields or opts.image_roles is not None:
                raise TypeError("name the images either by a mapping or by image_roles=, not both")
            fields = {**fields, "image_roles": tuple(images)}
            images = list(images.values())
        if fields:
            opts = opts.merged(**fields)  # unknown or invalid fields fail here, before any work
        cancel = cancel or threading.Event()
        steps = run_steps(self._turn, text, list(images), opts, cancel) if (opts.steps or 1) > 1 else \
            self._turn(text, list(images), opts, cancel)
        for event in steps:
            if on_event is not None:
                on_event(event)
            yield event

    def ask(self, text: str = "", images: Sequence[Any] = (), options: TurnOptions | None = None,
            **kwargs: Any) -> TurnDone:
        """``turn`` run to the end; returns its ``TurnDone`` (``done.errors`` says why a turn
        failed)."""
        done = None
        for event in self.turn(text, images, options, **kwargs):
            done = event
        assert isinstance(done, TurnDone)
        return done

    def get_image(self, image_id: str) -> "Image.Image":
        if image_id not in self._images:
            if self.store is None:
                raise KeyError(f"image {image_id} is not in this session")
            self._images[image_id] = self.store.get_image(image_id)
        return self._images[image_id]

    def versions(self) -> list["Version"]:
        """Every picture of the session as a numbered `Version` with its parent (versions.py)."""
        from .versions import versions

        return versions(self.history)

    def working_image(self) -> ImagePart | None:
        """The picture an edit or a follow-up without an image of its own is about: the latest
        one, or the version ``revert`` went back to."""
        from .versions import working_version

        version = working_version(self.history)
        return version.image if version is not None else None

    latest_image = working_image  # the name before versions existed

    def revert(self, number: int) -> "Version":
        """Make version ``number`` the working image again; the next edit branches from it.

        Recorded as a turn of its own (outside the model's context), so the store, resume and
        fork keep the chain. Raises `LookupError` for a version the session does not have."""
        from .store import TurnRecord, TurnRequest
        from .versions import lookup

        version = lookup(self.versions(), number)
        record = TurnRecord(session_id=self.id, index=len(self.history),
                            request=TurnRequest(revert_to=number), parts=(version.image,),
                            status="done", context=None)
        work = _Work(index=record.index, text="", options=TurnOptions(), cancel=threading.Event())
        for error in self._record(record, work):
            logger.warning("revert to version %d: %s", number, error.message)
        return version

    @property
    def cached_tokens(self) -> int:
        """Tokens in the KV cache of the session's variant (0 before the first turn)."""
        kv = self._kv.get(self.variant)
        return 0 if kv is None else len(kv)

    # --- one turn ---------------------------------------------------------------------------
    def _turn(self, text: str, sources: list[Any], opts: TurnOptions,
              cancel: threading.Event) -> Iterator[Event]:
        from .skills import SkillRequest, SkillRequestError, arrange_images

        work = _Work(index=len(self.history), text=text, options=opts, cancel=cancel)
        try:
            work.inputs = self._load_inputs(sources)
            skill = self._skill(opts)
            if not text.strip() and not work.inputs and skill is None and not opts.force_image:
                # nothing for the model to answer: its reply would be noise, not an answer
                raise TurnFailed("input", "an empty turn: no text and no image; say something, "
                                          "give an image, name a skill or set force_image")
            try:  # the model reads the images in the order the skill's roles say
                work.inputs = list(arrange_images(tuple(work.inputs), opts.image_roles, skill))
            except SkillRequestError as exc:  # the pictures do not fit the roles: the input's
                raise TurnFailed("input", str(exc)) from None
            try:  # the skill's wishes, under what the user set
                if skill is not None:
                    wishes = self.runtime.skill_host.turn_options(skill, SkillRequest(
                        text=text, images=tuple(work.inputs), skill=skill.name),
                        self.runtime.variants)
                    opts = TurnOptions.model_validate({**wishes,
                                                       **opts.model_dump(exclude_unset=True)})
            except SkillRequestError as exc:
                raise TurnFailed(f"skill:{skill.name}", str(exc)) from None
            except Exception as exc:  # a skill's bug, or wishes that are not valid options
                raise TurnFailed("skills", str(exc)) from None
            if opts.image_roles is not None:
                opts = opts.merged(image_roles=skill.image_roles)  # as the inputs now are
            work.options = opts
            yield from self._run(work, self._choose_variant(opts, skill), skill)
        except TurnFailed as exc:
            error = ErrorEvent(source=exc.source, message=str(exc))
            work.errors.append(error)
            yield error
            yield from self._record_failed(work)

    def _load_inputs(self, sources: list[Any]) -> list[ImagePart]:
        from core_models.image_io import ImageInputError, content_hash, load_image

        from .store import StoreError
        from .versions import lookup, version_number

        parts = []
        for i, source in enumerate(sources):
            number = version_number(source)
            if number is not None or isinstance(source, ImagePart):  # a picture of this session
                try:
                    part = lookup(self.versions(), number).image if number is not None else source
                    image = self.get_image(part.image_id)
                except (LookupError, KeyError, StoreError) as exc:
                    raise TurnFailed("input", f"image {i + 1}: {exc.args[0]}") from None
                parts.append(ImagePart(image_id=part.image_id, width=image.width,
                                       height=image.height, provenance=part.provenance))
                continue
            try:
                image = load_image(source)
            except ImageInputError as exc:
                raise TurnFailed("input", f"image {i + 1}: {exc}") from None
            try:
                image_id = (self.store.put_image(image) if self.store is not None
                            else content_hash(image))
            except StoreError as exc:  # the turn could not be saved with it: not run at all
                raise TurnFailed("store", f"image {i + 1} could not be saved: {exc}") from None
            self._images[image_id] = image
            parts.append(ImagePart(image_id=image_id, width=image.width, height=image.height))
        return parts

    def _skill(self, opts: TurnOptions):
        """The turn's skill: the one it names, else the session's, else None."""
        if (skill_name := opts.skill or self.record.default_skill) is None:
            return None
        try:
            return self.runtime.skill_host.get(skill_name)
        except Exception as exc:  # an unknown skill
            raise TurnFailed("skills", str(exc)) from None

    def _choose_variant(self, opts: TurnOptions, skill):
        try:
            return self.runtime.variants.choose(
                opts.variant, edit=opts.edit, default=self.variant,
                role=skill.variant_role if skill else None,
                preferred=skill.preferred_variant if skill else None,
                needed_by=f"skill {skill.name!r}" if skill else "")
        except LookupError as exc:
            raise TurnFailed("variant", exc.args[0]) from None

    def _run(self, work: "_Work", variant, skill) -> Iterator[Event]:
        from .skills import SkillContext, SkillReply, SkillRequest, SkillRequestError
        from .store import ModelContext, StoreError, TurnRecord

        opts, inputs = work.options, work.inputs
        edit = bool(opts.edit or variant.single_image_edit)
        for_skill_only = skill is not None and not skill.model_reads_images and not edit
        attached = [] if for_skill_only else list(inputs)
        latest = None if for_skill_only else self.working_image()
        lost = self._unreadable_image(latest) if latest is not None and not attached else None
        if edit and not attached:
            if latest is None:
                raise TurnFailed("input", "nothing to edit: give an image or generate one first")
            if lost is not None:
                raise TurnFailed("input", f"nothing to edit: the latest picture is gone: {lost}")
            attached = [latest]
        elif not attached and not opts.force_image and latest is not None and latest.role != "input":
            if lost is not None:  # answered without it rather than not at all
                notice = Notice(message=f"the latest picture is not shown to the model: {lost}")
                work.notices.append(notice)
                yield notice
            elif opts.about_image is not False:
                attached = [latest]  # the model cannot read back its own <img> run
        if edit and len(attached) != 1:
            raise TurnFailed("input", f"an edit turn takes exactly one image, got {len(attached)}")
        work.attached = attached

        request = SkillRequest(text=work.text, images=tuple(inputs if for_skill_only else attached),
                               skill=opts.skill)
        default_skill = self.record.default_skill
        host, no_skills = self._skill_host(needed=bool(request.skill or default_skill))
        try:
            if host is not None:
                host.check_request(request, self.get_image, default_skill=default_skill)
            instruction = host.build_prompt(request, default_skill=default_skill) \
                if host is not None else request.text
        except SkillRequestError as exc:  # the skill refuses: its words, before any picture
            raise TurnFailed(f"skill:{request.skill or default_skill}", str(exc)) from None
        except Exception as exc:
            raise TurnFailed("skills", str(exc)) from None

        max_new = opts.max_new_tokens or self.max_new_tokens or variant.max_new_tokens
        events = (self._edit_reply if edit else self._chat_reply)(variant, instruction, max_new, work)
        cancelled = False
        try:
            for event in events:
                if isinstance(event, Notice):
                    work.notices.append(event)
                yield event
        except Cancelled:
            cancelled = True
        except TurnFailed:
            raise
        except StoreError as exc:  # a drawn picture could not be saved: rolled back like a failure
            raise TurnFailed("store", str(exc)) from None
        except Exception as exc:  # the model or the de-tokenizer failed: roll back, report
            logger.exception("turn %d failed", work.index)
            raise TurnFailed("model", f"{type(exc).__name__}: {exc}") from None

        parsed: ParsedReply | None = work.parsed
        parts: list[Part] = list(inputs)
        warnings: list[str] = []
        if parsed is not None:
            parts += self._reply_parts(parsed, work.images)
            warnings = list(parsed.warnings)
        if not request.images and latest is not None and not any(
                isinstance(p, ImagePart) and p.role != "input" for p in parts):
            # A follow-up about the picture already in the conversation ("Where is the dog?"
            # after the photo came in an earlier turn): its boxes and skills are about that one.
            request = request.model_copy(update={"images": (latest,)})
        reply = SkillReply(request=request, parts=tuple(parts))
        placed = iter(reply.placed_boxes())
        parts = [next(placed) if isinstance(p, BoxPart) else p for p in parts]
        on_parts = {w for p in parts for w in p.warnings}
        for warning in warnings:  # e.g. a dropped box: no part is left to carry its warning
            if warning not in on_parts:
                notice = Notice(message=f"reply: {warning}")
                work.notices.append(notice)
                yield notice

        actions: list = []
        if not cancelled and parsed is not None and no_skills is not None:
            work.errors.append(no_skills)
            yield no_skills
        elif not cancelled and parsed is not None:
            context = SkillContext(artifact_dir=self._artifacts(work.index), get_image=self.get_image,
                                   earlier_actions=tuple(a for t in self.history if t.status == "done"
                                                         for a in t.actions))
            for event in host.dispatch(SkillReply(request=request, parts=tuple(parts)),
                                       context, default_skill=self.record.default_skill):
                if isinstance(event, ErrorEvent):
                    work.errors.append(event)
                elif isinstance(event, ActionEvent):
                    actions.append(event.action)
                    work.artifacts += [a for a in event.artifacts if a not in work.artifacts]
                yield event

        finish = "cancelled" if cancelled else (parsed.finish_reason if parsed else "error")
        record = TurnRecord(
            session_id=self.id, index=work.index, request=work.request(edit, variant.name),
            parts=tuple(parts), actions=tuple(actions), errors=tuple(work.errors),
            notices=tuple(work.notices), artifacts=tuple(work.artifacts),
            finish_reason=finish, variant=variant.name,
            prompt_tokens=work.prompt_tokens, reply_tokens=len(work.reply_ids),
            status="cancelled" if cancelled else "done",
            context=ModelContext(variant=variant.name, instruction=instruction,
                                 image_ids=tuple(p.image_id for p in attached),
                                 grids=tuple(variant.resolution_grids),
                                 image_first=variant.template.image_first,
                                 reply_ids=tuple(work.reply_ids),
                                 in_context=not edit and not cancelled))
        yield from self._record(record, work)
        for warning in warnings:
            logger.info("turn %d: %s", work.index, warning)
        yield TurnDone(turn_index=work.index, parts=tuple(parts), actions=tuple(actions),
                       errors=tuple(work.errors), notices=tuple(work.notices),
                       artifacts=tuple(work.artifacts), finish_reason=finish)

    def _record_failed(self, work: "_Work") -> Iterator[Event]:
        """A failed turn goes into the history and the store, marked failed and outside the
        model's context (its request is kept, so the user can see and retry it)."""
        from .store import TurnRecord

        record = TurnRecord(session_id=self.id, index=work.index,
                            request=work.request(bool(work.options.edit), work.options.variant),
                            parts=tuple(work.inputs), errors=tuple(work.errors),
                            notices=tuple(work.notices), finish_reason="error", status="failed",
                            variant=work.options.variant, context=None)
        yield from self._record(record, work)
        yield TurnDone(turn_index=work.index, parts=tuple(work.inputs), errors=tuple(work.errors),
                       notices=tuple(work.notices), finish_reason="error")

    def _record(self, record: "TurnRecord", work: "_Work") -> Iterator[Event]:
        self.history.append(record)
        for error in self._save(record) if self.store is not None else ():
            # the turn still counts in memory; saving is retried after the next turn
            work.errors.append(error)
            yield error

    def _save(self, record: "TurnRecord") -> list[ErrorEvent]:
        """Append ``record`` and any earlier turn a failed save left behind, in order; what
        went wrong, as error events."""
        from .plugins import pm
        from .store import StoreError

        self._unsaved.append(record)
        errors = []
        while self._unsaved:
            turn = self._unsaved[0]
            try:
                stored = self.store.append_turn(turn)
            except StoreError as exc:
                errors.append(ErrorEvent(source="store", message=(
                    f"turn {turn.index} is not saved yet (retried after the next turn): {exc}")))
                break
            self._unsaved.pop(0)
            self.history[turn.index] = stored
            try:  # a plugin's bug must not undo a saved turn or end the session
                pm.hook.turn_done(session=self.record, turn=stored)
            except Exception as exc:
                logger.exception("a turn_done hook failed on turn %d", turn.index)
                errors.append(ErrorEvent(source="plugins", message=(
                    f"a turn_done hook failed on turn {turn.index} (the turn is saved): {exc!r}")))
        return errors

    def _skill_host(self, *, needed: bool) -> tuple[Any, ErrorEvent | None]:
        """The runtime's skill host, or (when a plugin broke while registering its skills and
        the turn names no skill) None and the error to report in place of the skills' work."""
        try:
            return self.runtime.skill_host, None
        except Exception as exc:
            if needed:
                raise TurnFailed("skills", str(exc)) from None
            return None, ErrorEvent(source="skills", message=f"no skill ran: {exc}")

    def _unreadable_image(self, part: ImagePart) -> str | None:
        """Why the store cannot give back ``part``'s picture, or None when it can."""
        from .store import StoreError

        try:
            self.get_image(part.image_id)
        except (KeyError, StoreError) as exc:
            return str(exc.args[0] if exc.args else exc)
        return None

    # --- the model's side of a turn -----------------------------------------------------------
    def _chat_reply(self, variant, instruction: str, max_new: int, work: "_Work") -> Iterator[Event]:
        rt = self.runtime
        images = work.attached
        tok = rt.tokenizer
        with rt.lock("llm"):
            agent = rt.agent(variant.name)
            multi = variant.template.multi_turn
            encoded = [rt.encode_image(self.get_image(p.image_id), p.image_id, variant.resolution_grids)
                       for p in images]
            if multi:
                yield from self._drop_unreadable_turns()
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
            work.prompt_tokens = len(ids)
            try:
                yield from self._generate(agent, kv, ids, encoded, max_new, work)
            except BaseException:
                kv.crop(mark)  # a cancelled or failed turn leaves the cache as it was
                raise
        # a stage-2 variant (try-on) draws conditioned on the turn's first image (the person)
        condition = images[0] if variant.detokenizer_stage == 2 and images else None
        try:
            yield from self._render_images(variant, stage=variant.detokenizer_stage,
                                           source=condition, work=work)
        except BaseException:
            kv.crop(mark)  # ... also when it is cancelled or fails while drawing its images
            raise
        self._kv_turns[variant.name] = self._kv_turns.get(variant.name, []) + [len(self.history)]

    def _edit_reply(self, variant, instruction: str, max_new: int, work: "_Work") -> Iterator[Event]:
        rt = self.runtime
        tok = rt.tokenizer
        source = work.attached[0]
        with rt.lock("llm"):
            agent = rt.agent(variant.name)
            encoded = [rt.encode_image(self.get_image(source.image_id), source.image_id,
                                       variant.resolution_grids)]
            ids = [tok.bos_token_id] + tok.encode(
                variant.template.render(self._instruction(variant, instruction, encoded), True))
            work.prompt_tokens = len(ids)
            kv = rt.new_generation(agent)
            yield from self._generate(agent, kv, ids, encoded, max_new, work)
        yield from self._render_images(variant, stage=2, source=source, work=work)

    def _generate(self, agent, kv, ids: list[int], encoded: list, max_new: int,
                  work: "_Work") -> Iterator[Event]:
        rt = self.runtime
        input_ids, embeds = self._embed(agent, ids, encoded)
        kv.prefill(input_ids, embeds)
        parser = ReplyParser(rt.tokenizer, num_img_tokens=rt.config.num_img_tokens)
        result = None
        for event in kv.stream(max_new, num_img_gen_tokens=rt.config.num_img_tokens,
                               force_image=work.options.force_image, cancel=work.cancel):
            if event.token_id is not None:
                pause_point("decoding")
                yield from parser.feed(event.token_id)
            if event.result is not None:
                result = event.result
        if result.stop_reason == "cancelled":
            raise Cancelled()
        reason = {"eos": "eos", "length": "max_new_tokens"}[result.stop_reason]
        work.parsed = parser.finish(reason)
        reply_ids = list(result.generated_ids)
        if reply_ids and reply_ids[-1] == rt.tokenizer.eos_token_id:
            kv.crop(-1)  # the next turn is appended without this EOS, as in training
            reply_ids.pop()
        work.reply_ids = reply_ids
        work.features = {im.eoi_index: im.features.detach() for im in result.images}

    def _render_images(self, variant, *, stage: int, source: ImagePart | None,
                       work: "_Work") -> Iterator[Event]:
        rt = self.runtime
        opts = work.options.resolved(rt.render_defaults)
        # what the de-tokenizer was conditioned on (stage 2) or the LLM read (stage 1)
        parents = tuple(dict.fromkeys(p.image_id for p in ([source] if source else []) + work.attached))
        for slot in work.parsed.image_slots:
            features = work.features.get(slot.end) if slot.complete else None
            if features is None:
                continue
            src_image = self.get_image(source.image_id) if source is not None else None
            image = yield from streamed(lambda emit: rt.render(
                features, stage=stage, options=opts, source=src_image, cancel=work.cancel,
                on_step=lambda i, n: emit(DenoiseStep(index=slot.run_index, step=i, total=n))))
            if src_image is not None:  # SEED-X-Edit renders squares; give back the source's shape
                image = image.resize(_same_aspect(src_image.size, max(image.size)))
            image_id = self.store.put_image(image) if self.store is not None else _hash(image)
            self._images[image_id] = image
            part = ImagePart(
                image_id=image_id, width=image.width, height=image.height,
                role="edited" if source is not None else "generated",
                provenance=Provenance(
                    model=rt.name, variant=variant.name, seed=opts.seed,
                    num_inference_steps=opts.num_inference_steps,
                    guidance_scale=opts.guidance_scale,
                    image_guidance_scale=opts.image_guidance_scale if stage == 2 else None,
                    scheduler="EulerDiscreteScheduler", detokenizer_stage=stage,
                    weights_fingerprint=rt.weights_fingerprint, parents=parents))
            work.images[slot.run_index] = part
            yield ImageDone(index=slot.run_index, image=part)

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
        return with_images(text, encoded, self.runtime.config.num_img_tokens,
                            variant.template.image_first)

    def _artifacts(self, index: int) -> Path:
        return self.artifact_dir / f"turn-{index:03d}"


@dataclass
class _Work:
    """One turn in progress: what it was asked, and what the model side has produced so far."""

    index: int
    text: str
    options: TurnOptions
    cancel: threading.Event
    inputs: list[ImagePart] = field(default_factory=list)    # the user's images
    attached: list[ImagePart] = field(default_factory=list)  # what the model reads this turn
    prompt_tokens: int = 0
    parsed: ParsedReply | None = None
    reply_ids: list[int] = field(default_factory=list)
    features: dict[int, Any] = field(default_factory=dict)   # </img> position -> features
    images: dict[int, ImagePart] = field(default_factory=dict)  # image run -> rendered part
    errors: list[ErrorEvent] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    def request(self, edit: bool, variant: str | None):
        from .store import TurnRequest

        o = self.options
        return TurnRequest(text=self.text, image_ids=tuple(p.image_id for p in self.inputs),
                           skill=o.skill, force_image=o.force_image, edit=edit, variant=variant,
                           options=o.model_dump(exclude_defaults=True))


def _same_aspect(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    w, h = size
    scale = long_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _hash(image) -> str:
    from core_models.image_io import content_hash
    return content_hash(image)
