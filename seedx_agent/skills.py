"""Skills: plugins that turn what SEED-X said (typed parts) into actions, and carry them out.

One turn, as a skill sees it::

    SkillRequest ──build_prompt──▶ prompt ──model──▶ SkillReply(parts)
        ──to_actions──▶ [Action, …] ──validate payload──▶ run(action, context) ──▶ ActionEvent
                                                                  (or ErrorEvent on any failure)

A skill is a plain class whose capabilities are class attributes (``consumes``, ``deadline_s``,
``action_types`` …), registered by a plugin through the ``register_skills(register)`` hook. The
``SkillHost`` collects them, checks their declarations once (so a mistake is reported when the
agent starts, naming the skill, not in the middle of a turn), picks the skills for a turn and
dispatches the reply to them.

Isolation. Skills are other people's code running inside the agent, so nothing a skill does may
break a turn: an exception, a wrong return value, an invalid payload or a skill that never
returns each become one ``ErrorEvent`` and the other skills still run. A skill's work for a turn
(``to_actions`` and every ``run``) happens on its own daemon thread and the host stops waiting
after ``deadline_s``. Python cannot kill a thread: an overrunning skill is *abandoned*, not
stopped. It keeps running in the background until it returns or the process exits, and whatever
it produces after the deadline is dropped. Being a daemon thread, it does not keep the process
alive.

Nothing here holds tensors; images are ``ImagePart`` records (content hash and size) and a skill
that needs pixels asks ``context.get_image(image_id)`` for a PIL image.
"""

from __future__ import annotations

import logging
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from seedx_agent.hookspecs import hookimpl
from seedx_agent.types import Action, ActionEvent, BoxPart, ErrorEvent, ImagePart, Part

if TYPE_CHECKING:
    import pluggy
    from PIL import Image

__all__ = ["PART_TYPES", "ActionResult", "Skill", "SkillContext", "SkillError", "SkillHost",
           "SkillRegistrationError", "SkillReply", "SkillRequest", "hookimpl"]

PART_TYPES = frozenset({"text", "box", "image"})
"""The part types a skill can declare in ``consumes`` (the ``type`` of each part in types.py)."""

_SKILL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # names become directory names and CLI arguments


class SkillError(RuntimeError):
    """A skill could not be found, or did something the host refuses; the message says which."""


class SkillRegistrationError(SkillError):
    """A plugin registered a skill with a bad declaration, or a name another skill already has."""


# --- what a skill sees ---------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SkillRequest(_Record):
    """What the user asked in this turn: their words, the images they gave, the skill they named."""

    text: str = ""
    images: tuple[ImagePart, ...] = ()
    skill: str | None = None


class SkillReply(_Record):
    """The model's reply to a ``SkillRequest``, as parts, with the request it answers."""

    request: SkillRequest
    parts: tuple[Part, ...] = ()

    @property
    def input_images(self) -> tuple[ImagePart, ...]:
        return self.request.images

    @property
    def generated_images(self) -> tuple[ImagePart, ...]:
        return tuple(p for p in self.parts if isinstance(p, ImagePart) and p.role != "input")

    @property
    def boxes(self) -> tuple[BoxPart, ...]:
        return tuple(p for p in self.parts if isinstance(p, BoxPart))

    @property
    def part_types(self) -> frozenset[str]:
        return frozenset(p.type for p in self.parts)

    def image(self, image_id: str) -> ImagePart | None:
        """The input or generated image with this id, if this turn has it."""
        for image in (*self.input_images, *self.generated_images):
            if image.image_id == image_id:
                return image
        return None

    def placed_boxes(self) -> list[BoxPart]:
        """Every box of the reply, placed in pixels on the image it refers to.

        SEED-X's boxes are relative (224 bins) and do not say which picture they are on, so:

        1. a box whose ``target_image`` the runtime already set keeps it;
        2. otherwise it refers to the **last input image of the turn** (the picture the user
           asked about: "where is the dog in this photo?");
        3. a turn without input images can only be about a picture the model drew: the first
           generated image after the box, else the last one before it;
        4. otherwise (and for layout boxes on a ``canvas``) the box is returned unplaced
           (``pixel_xyxy`` None).
        """
        placed = []
        last_input = self.input_images[-1] if self.input_images else None
        for i, part in enumerate(self.parts):
            if not isinstance(part, BoxPart):
                continue
            box = part
            if box.target_kind == "canvas" or (box.target_image and box.pixel_xyxy):
                placed.append(box)
                continue
            target = self.image(box.target_image) if box.target_image else last_input
            if target is None and not box.target_image:
                after = [p for p in self.parts[i + 1:] if isinstance(p, ImagePart)]
                before = [p for p in self.parts[:i] if isinstance(p, ImagePart)]
                target = (after[:1] or before[-1:] or [None])[0]
            if target is not None:
                kind = "input" if target.role == "input" else "generated"
                box = box.on(target.width, target.height, target_image=target.image_id,
                             target_kind=kind)
            placed.append(box)
        return placed


class ActionResult(_Record):
    """What running one action did: a line for the user, the files it wrote, any warnings.

    ``action`` is filled in by the host, so a list of results stands on its own.
    """

    message: str = ""
    artifacts: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()
    action: Action | None = None


@dataclass
class SkillContext:
    """The turn's workspace, handed to ``Skill.run``.

    The host gives each skill its own ``artifact_dir`` (``<turn artifact dir>/<skill name>``) so
    two skills never overwrite each other's files. ``get_image`` is usually the store's
    ``SessionStore.get_image``. ``results`` collects one ``ActionResult`` per action that ran, in
    the order of the ``ActionEvent``s; only the host appends to it.
    """

    artifact_dir: Path
    get_image: Callable[[str], Image.Image]
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("seedx_agent.skills"))
    results: list[ActionResult] = field(default_factory=list)

    def for_skill(self, name: str) -> SkillContext:
        """This context narrowed to one skill (its own directory and logger, shared results)."""
        return replace(self, artifact_dir=Path(self.artifact_dir) / name,
                       logger=self.logger.getChild(name))


# --- the skill contract --------------------------------------------------------------------------

class Skill:
    """Subclass this, set the class attributes, implement ``to_actions`` and ``run``.

    Payload models in ``action_types`` may set ``version: ClassVar[int]`` (default 1); it is
    written on every action, so a stored action can be recognised after its model changed.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    consumes: ClassVar[frozenset[str]] = frozenset()
    preferred_variant: ClassVar[str | None] = None
    deadline_s: ClassVar[float] = 30.0
    action_types: ClassVar[dict[str, type[BaseModel]]] = {}

    def build_prompt(self, request: SkillRequest) -> str | None:
        """The instruction to send to the model for ``request``; None sends the user's text."""
        return None

    def to_actions(self, reply: SkillReply) -> list[Action]:
        """Decide what should happen for this reply (no side effects: those belong in ``run``)."""
        raise NotImplementedError

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        """Carry out one of this skill's actions; write files under ``context.artifact_dir``."""
        raise NotImplementedError

    # helpers, so skills build and read their envelopes the same way the host checks them

    def make_action(self, action_type: str, payload: BaseModel | dict[str, Any]) -> Action:
        """An ``Action`` envelope of this skill around a payload of its declared model."""
        model = self.action_types.get(action_type)
        if model is None:
            raise SkillError(f"skill {self.name!r} has no action type {action_type!r} "
                             f"(declared: {sorted(self.action_types)})")
        if not isinstance(payload, model):
            payload = model.model_validate(payload)
        return Action(skill=self.name, action=action_type, version=_version(model),
                      payload=payload.model_dump(mode="json"))

    def parse_payload(self, action: Action) -> BaseModel:
        """The payload of one of this skill's actions, as its declared model."""
        return self.action_types[action.action].model_validate(action.payload)


def _version(model: type[BaseModel]) -> Any:
    return getattr(model, "version", 1)


def _declaration_problems(skill: Any) -> list[str]:
    """Everything wrong with how ``skill`` declares itself, in words its author can act on."""
    if isinstance(skill, type) and issubclass(skill, Skill):
        return [f"register an instance, not the class: register({skill.__name__}())"]
    if not isinstance(skill, Skill):
        return [f"expected a seedx_agent.skills.Skill instance, got {type(skill).__name__}"]
    problems = []
    if not isinstance(skill.name, str) or not _SKILL_NAME.match(skill.name):
        problems.append(f"name must match {_SKILL_NAME.pattern}, got {skill.name!r}")
    if not isinstance(skill.description, str):
        problems.append("description must be a str")
    if not isinstance(skill.consumes, (set, frozenset)) or not skill.consumes <= PART_TYPES:
        problems.append(f"consumes must be a frozenset of {sorted(PART_TYPES)}, "
                        f"got {skill.consumes!r}")
    if skill.preferred_variant is not None and not (isinstance(skill.preferred_variant, str)
                                                    and skill.preferred_variant):
        problems.append(f"preferred_variant must be None or a variant name, "
                        f"got {skill.preferred_variant!r}")
    deadline = skill.deadline_s
    if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) \
            or not math.isfinite(deadline) or deadline <= 0:
        problems.append(f"deadline_s must be a positive number of seconds, got {deadline!r}")
    if not isinstance(skill.action_types, dict) or not skill.action_types:
        problems.append("action_types must be a non-empty dict {action type: pydantic model}")
    else:
        for action_type, model in skill.action_types.items():
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                problems.append(f"action_types[{action_type!r}] must be a pydantic model class")
            elif not isinstance(_version(model), int) or _version(model) < 1:
                problems.append(f"{model.__name__}.version must be an int >= 1")
    for method in ("to_actions", "run"):
        if getattr(type(skill), method) is getattr(Skill, method):
            problems.append(f"must implement {method}()")
    return problems


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


# --- the host ------------------------------------------------------------------------------------

_DONE = object()


class SkillHost:
    """Collects skills from plugins and dispatches replies to them, one skill failing alone.

    ``pm`` defaults to the plugin manager of ``seedx_agent.plugins`` (entry points loaded).
    """

    def __init__(self, pm: pluggy.PluginManager | None = None):
        if pm is None:
            from seedx_agent.plugins import pm
        self.pm = pm
        self._skills: dict[str, Skill] = {}
        pm.hook.register_skills(register=self.register)

    def __repr__(self) -> str:
        return f"<SkillHost skills={list(self.skills)}>"

    @property
    def skills(self) -> dict[str, Skill]:
        """The registered skills by name, sorted by name (a copy)."""
        return dict(sorted(self._skills.items()))

    def register(self, skill: Skill) -> None:
        """Add one skill; the ``register`` callback that ``register_skills`` hooks receive.

        The same skill class registered twice (a plugin loaded under two names) counts once; a
        different skill under a name that is taken is an error, since silently picking one would
        make the agent's behaviour depend on install order.
        """
        problems = _declaration_problems(skill)
        if problems:
            where = _qualname(skill) if isinstance(skill, Skill) else repr(skill)
            raise SkillRegistrationError(f"bad skill {where}: " + "; ".join(problems))
        existing = self._skills.get(skill.name)
        if existing is not None and type(existing) is not type(skill):
            raise SkillRegistrationError(
                f"skill name {skill.name!r} is registered twice, by {_qualname(existing)} and "
                f"{_qualname(skill)}; uninstall one, or choose plugins with SEEDX_LOAD_PLUGINS")
        self._skills.setdefault(skill.name, skill)

    def get(self, name: str) -> Skill:
        try:
            return self._skills[name]
        except KeyError:
            raise SkillError(f"no skill named {name!r}; installed: "
                             f"{', '.join(self._skills) or 'none'}") from None

    def build_prompt(self, request: SkillRequest, *, default_skill: str | None = None) -> str:
        """The prompt for ``request``: phrased by the turn's (or session's) skill, if any."""
        name = request.skill or default_skill
        if name is None:
            return request.text
        skill = self.get(name)
        try:
            prompt = skill.build_prompt(request)
        except Exception as exc:
            raise SkillError(f"skill {name!r} failed to build its prompt: {exc!r}") from exc
        if prompt is not None and not isinstance(prompt, str):
            raise SkillError(f"skill {name!r}: build_prompt returned {type(prompt).__name__}, "
                             "not a str or None")
        return request.text if prompt is None else prompt

    def select(self, reply: SkillReply, *, default_skill: str | None = None) -> list[Skill]:
        """The skills for this turn: the one the turn names, else the session's default skill,
        else every skill that consumes one of the reply's part types (sorted by name)."""
        name = reply.request.skill or default_skill
        if name is not None:
            return [self.get(name)]
        kinds = reply.part_types
        return [skill for skill in self.skills.values() if skill.consumes & kinds]

    def parse_payload(self, action: Action) -> BaseModel | dict[str, Any]:
        """A stored action's payload as its skill's model, or the plain dict when that skill (or
        that action type and version) is not installed: old sessions stay readable."""
        skill = self._skills.get(action.skill)
        model = skill.action_types.get(action.action) if skill else None
        if model is None or _version(model) != action.version:
            return dict(action.payload)
        return model.model_validate(action.payload)

    def dispatch(self, reply: SkillReply, context: SkillContext, *,
                 default_skill: str | None = None) -> Iterator[ActionEvent | ErrorEvent]:
        """Run the selected skills on ``reply``; yields an ``ActionEvent`` per action that ran
        and an ``ErrorEvent`` per failure, in order, and never raises for a skill's fault."""
        try:
            skills = self.select(reply, default_skill=default_skill)
        except SkillError as exc:
            yield ErrorEvent(source="skills", message=str(exc))
            return
        for skill in skills:
            yield from self._dispatch_one(skill, reply, context)

    def _dispatch_one(self, skill: Skill, reply: SkillReply,
                      context: SkillContext) -> Iterator[ActionEvent | ErrorEvent]:
        source = f"skill:{skill.name}"
        skill_context = context.for_skill(skill.name)
        events: queue.SimpleQueue = queue.SimpleQueue()

        def work() -> None:
            try:
                for item in self._work(skill, reply, skill_context):
                    events.put(item)
            except BaseException as exc:  # noqa: BLE001 - even SystemExit must not end the turn
                events.put((ErrorEvent(source=source, message=f"failed: {exc!r}"), None))
            finally:
                events.put(_DONE)

        deadline = time.monotonic() + skill.deadline_s
        threading.Thread(target=work, name=f"seedx-skill-{skill.name}", daemon=True).start()
        while True:
            try:
                # timeout 0 still returns what is already queued, so a slow consumer of these
                # events does not turn a skill that finished in time into a late one
                item = events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                skill_context.logger.error("abandoned after its %gs deadline", skill.deadline_s)
                yield ErrorEvent(source=source, message=(
                    f"did not finish within its deadline of {skill.deadline_s:g} s and was "
                    "abandoned (its thread cannot be stopped and may still be running)"))
                return
            if item is _DONE:
                return
            event, result = item
            if result is not None:
                context.results.append(result)
            yield event

    def _work(self, skill: Skill, reply: SkillReply,
              context: SkillContext) -> Iterator[tuple[ActionEvent | ErrorEvent, Any]]:
        """A skill's whole turn, on its worker thread: to_actions, then check and run each."""
        source = f"skill:{skill.name}"

        def error(message: str, exc: BaseException | None = None):
            context.logger.error(message, exc_info=exc)
            return ErrorEvent(source=source, message=message), None

        try:
            actions = skill.to_actions(reply)
        except Exception as exc:
            yield error(f"to_actions raised {exc!r}", exc)
            return
        if not isinstance(actions, (list, tuple)):
            yield error(f"to_actions returned {type(actions).__name__}, not a list of Action")
            return
        for action in actions:
            try:
                action = self._checked(skill, action)
            except SkillError as exc:
                yield error(str(exc))
                continue
            try:
                context.artifact_dir.mkdir(parents=True, exist_ok=True)
                result = skill.run(action, context)
            except Exception as exc:
                yield error(f"run({action.action!r}) raised {exc!r}", exc)
                continue
            if result is None:
                result = ActionResult()
            if not isinstance(result, ActionResult):
                yield error(f"run({action.action!r}) returned {type(result).__name__}, "
                            "not an ActionResult")
                continue
            for warning in result.warnings:
                context.logger.warning("%s: %s", action.action, warning)
            yield ActionEvent(action=action), result.model_copy(update={"action": action})

    @staticmethod
    def _checked(skill: Skill, action: Any) -> Action:
        """``action`` with its payload validated (and normalised) by the skill's own model."""
        if not isinstance(action, Action):
            raise SkillError(f"to_actions returned a {type(action).__name__}, not an Action")
        if action.skill != skill.name:
            raise SkillError(f"action {action.action!r} claims to be from skill {action.skill!r}")
        model = skill.action_types.get(action.action)
        if model is None:
            raise SkillError(f"action type {action.action!r} is not declared in action_types")
        if action.version != _version(model):
            raise SkillError(f"action {action.action!r} has version {action.version}, "
                             f"{model.__name__} is version {_version(model)}")
        try:
            payload = model.model_validate(action.payload)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                                for e in exc.errors())
            raise SkillError(f"invalid {action.action!r} payload: {details}") from None
        return Action(skill=action.skill, action=action.action, version=action.version,
                      payload=payload.model_dump(mode="json"))
