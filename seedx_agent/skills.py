"""Skills: the contract between the agent and a plugin that acts on what SEED-X said.

One turn, as a skill sees it::

    SkillRequest ──check_request, build_prompt──▶ prompt ──model──▶ SkillReply(parts)
        ──to_actions──▶ [Action, …] ──validate payload──▶ run(action, context) ──▶ ActionEvent
                                                                  (or ErrorEvent on any failure)

A skill is a plain class whose capabilities are class attributes (``consumes``, ``deadline_s``,
``action_types``, ``variant_role``, ``image_roles`` …), registered by a plugin through the
``register_skills(register)`` hook. This module is what a skill author reads: the values a
skill sees (`SkillRequest`, `SkillReply`, `SkillContext`, `ActionResult`) and the `Skill` class.
`seedx_agent.skill_host.SkillHost` collects, checks and runs skills, each isolated on its own
thread with a deadline; `seedx_agent.box_placement` decides which picture a box is on.

Nothing here holds tensors; images are ``ImagePart`` records (content hash and size) and a skill
that needs pixels asks ``context.get_image(image_id)`` for a PIL image.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from seedx_agent.box_placement import place_boxes
from seedx_agent.hookspecs import hookimpl
from seedx_agent.types import Action, BoxPart, ImagePart, Part

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["PART_TYPES", "ActionResult", "Skill", "SkillContext", "SkillError",
           "SkillRegistrationError", "SkillReply", "SkillRequest", "SkillRequestError",
           "arrange_images", "declaration_problems", "hookimpl", "payload_version"]

PART_TYPES = frozenset({"text", "box", "image"})
"""The part types a skill can declare in ``consumes`` (the ``type`` of each part in types.py)."""

_SKILL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")  # names become directory names and CLI arguments


class SkillError(RuntimeError):
    """A skill could not be found, or did something the host refuses; the message says which."""


class SkillRegistrationError(SkillError):
    """A plugin registered a skill with a bad declaration, or a name another skill already has."""


class SkillRequestError(SkillError):
    """A skill refuses what a turn asked (one image where it needs two, images in the wrong
    roles): the turn fails with this message, for the user, before the model runs."""


# --- what a skill sees ---------------------------------------------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SkillRequest(_Record):
    """What the user asked in this turn: their words, the images they gave, the skill they named.

    For a skill that declares ``image_roles`` the images are in that order, whichever order the
    user gave them in (`arrange_images`), so ``images[i]`` plays ``image_roles[i]``.
    """

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
        """Every box of the reply, placed in pixels on the image it refers to
        (`seedx_agent.box_placement.place_boxes` says how the image is chosen)."""
        return place_boxes(self.parts, self.input_images)


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

    ``earlier_actions`` are the actions of the session's earlier finished turns, oldest first
    (narrowed to the skill's own by ``for_skill``): a skill whose artifact grows over a session
    (a deck a slide per turn, a storybook a step per turn) rebuilds it from them, so a resumed or
    forked session gets the same file without the skill keeping any state.
    """

    artifact_dir: Path
    get_image: Callable[[str], Image.Image]
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("seedx_agent.skills"))
    results: list[ActionResult] = field(default_factory=list)
    earlier_actions: tuple[Action, ...] = ()

    def for_skill(self, name: str) -> SkillContext:
        """This context narrowed to one skill (its own directory, logger and earlier actions;
        shared results)."""
        return replace(self, artifact_dir=Path(self.artifact_dir) / name,
                       logger=self.logger.getChild(name),
                       earlier_actions=tuple(a for a in self.earlier_actions if a.skill == name))


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
    # a job only some fine-tunes can do: the turn runs on a variant declaring this role
    variant_role: ClassVar[str | None] = None
    # the input images the skill needs, in the order the model must read them; the user gives
    # them in this order or names them (TurnOptions.image_roles)
    image_roles: ClassVar[tuple[str, ...]] = ()
    deadline_s: ClassVar[float] = 30.0
    action_types: ClassVar[dict[str, type[BaseModel]]] = {}
    # False: the turn's images are for the skill (``request.images``), not for the model to read
    # (a slide skill placing a poster it was given: the model lays out the slide from the words)
    model_reads_images: ClassVar[bool] = True

    def turn_options(self, request: SkillRequest, variants: Any) -> dict[str, Any]:
        """`TurnOptions` fields this request wants (``{"edit": True}`` for "improve this"),
        given the registered variants (a `VariantRegistry`); what the user set explicitly wins.
        Runs before the variant is chosen; ``request.images`` are the user's images."""
        return {}

    def check_request(self, request: SkillRequest,
                      get_image: Callable[[str], Image.Image]) -> None:
        """Refuse a request the model should not even see by raising `SkillRequestError`; runs
        before ``build_prompt``, with the pixels of ``request.images`` at hand."""

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
        return Action(skill=self.name, action=action_type, version=payload_version(model),
                      payload=payload.model_dump(mode="json"))

    def parse_payload(self, action: Action) -> BaseModel:
        """The payload of one of this skill's actions, as its declared model."""
        return self.action_types[action.action].model_validate(action.payload)


def arrange_images(images: tuple[ImagePart, ...], given: tuple[str, ...] | None,
                   skill: Skill | None) -> tuple[ImagePart, ...]:
    """A turn's images in the order ``skill.image_roles`` says, from the roles the user gave
    them (``given``, one per image) or, with none given, from their order.

    Refusing here, before the model runs, is the point: a try-on with one picture, or with a
    role nobody asked for, is a mistake to explain, not a picture to draw.
    """
    wanted = skill.image_roles if skill is not None else ()
    if given is None:
        if wanted and len(images) != len(wanted):
            raise SkillRequestError(
                f"skill {skill.name!r} takes {len(wanted)} images, {' then '.join(wanted)}; "
                f"got {len(images)}")
        return images
    if not wanted:
        raise SkillRequestError(
            f"image_roles {list(given)} given, but " + (f"skill {skill.name!r} takes its images "
                                                        "in order, unnamed" if skill else
                                                        "the turn names no skill that takes "
                                                        "named images"))
    if len(given) != len(images):
        raise SkillRequestError(f"image_roles names {len(given)} images, the turn has "
                                f"{len(images)}")
    if sorted(given) != sorted(wanted):
        raise SkillRequestError(f"skill {skill.name!r} takes one image each as "
                                f"{', '.join(wanted)}; image_roles were {', '.join(given)}")
    return tuple(images[given.index(role)] for role in wanted)


def payload_version(model: type[BaseModel]) -> Any:
    """The ``version`` a payload model declares (1 if it declares none)."""
    return getattr(model, "version", 1)


def declaration_problems(skill: Any) -> list[str]:
    """Everything wrong with how ``skill`` declares itself, in words its author can act on."""
    if isinstance(skill, type) and issubclass(skill, Skill):
        return [f"register an instance, not the class: register({skill.__name__}())"]
    if not isinstance(skill, Skill):
        return [f"expected a seedx_agent.skills.Skill instance, got {type(skill).__name__}"]
    problems = []
    if not isinstance(skill.name, str) or not _SKILL_NAME.fullmatch(skill.name):
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
    if skill.variant_role is not None and not (isinstance(skill.variant_role, str)
                                               and _SKILL_NAME.fullmatch(skill.variant_role)):
        problems.append(f"variant_role must be None or a role name matching "
                        f"{_SKILL_NAME.pattern}, got {skill.variant_role!r}")
    roles = skill.image_roles
    if not (isinstance(roles, tuple) and all(isinstance(r, str) and _SKILL_NAME.fullmatch(r)
                                             for r in roles) and len(set(roles)) == len(roles)):
        problems.append(f"image_roles must be a tuple of distinct names matching "
                        f"{_SKILL_NAME.pattern}, got {roles!r}")
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
            elif not isinstance(payload_version(model), int) or payload_version(model) < 1:
                problems.append(f"{model.__name__}.version must be an int >= 1")
    for method in ("to_actions", "run"):
        if getattr(type(skill), method) is getattr(Skill, method):
            problems.append(f"must implement {method}()")
    return problems
