"""The skill host: collects skills from plugins and runs them on a turn, one failing alone.

Declarations are checked once, at registration (so a mistake is reported when the agent starts,
naming the skill, not in the middle of a turn); then, per turn, the host picks the skills, asks
each for its actions and runs them.

Isolation. Skills are other people's code running inside the agent, so nothing a skill does may
break a turn: an exception, a wrong return value, an invalid payload or a skill that never
returns each become one ``ErrorEvent`` and the other skills still run. A skill's work for a turn
(``to_actions`` and every ``run``) happens on its own daemon thread and the host stops waiting
after ``deadline_s``. Python cannot kill a thread: an overrunning skill is *abandoned*, not
stopped. It keeps running in the background until it returns or the process exits, and whatever
it produces after the deadline is dropped, never attached to a later turn: its events go to a
queue only that turn read, and when it does finish, the host logs (at warning level, on the
skill's logger) what it discarded. Being a daemon thread, it does not keep the process alive.

Registration is strict instead: a plugin whose ``register_skills`` raises, a bad declaration and
two skills under one name are each a `SkillRegistrationError` naming the plugin or the skill
classes, raised when the host is built, because guessing which skills a broken install meant to
offer would make the agent's behaviour depend on it.

Each action that ran is reported as an ``ActionEvent`` carrying the skill's one-line summary and
the absolute paths of the files it wrote under its artifact directory (only files that
exist; a path it reports elsewhere is left out with an error event).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from seedx_agent.artifacts import reported_artifacts
from seedx_agent.skills import (ActionResult, Skill, SkillContext, SkillError,
                                SkillRegistrationError, SkillReply, SkillRequest,
                                SkillRequestError, declaration_problems, payload_version)
from seedx_agent.types import Action, ActionEvent, ErrorEvent

if TYPE_CHECKING:
    import pluggy

_DONE = object()


def _qualname(obj: object) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class SkillHost:
    """Collects skills from plugins and dispatches replies to them, one skill failing alone.

    ``pm`` defaults to the plugin manager of ``seedx_agent.plugins`` (entry points loaded).
    """

    def __init__(self, pm: pluggy.PluginManager | None = None):
        if pm is None:
            from seedx_agent.plugins import pm
        self.pm = pm
        self._skills: dict[str, Skill] = {}
        try:
            pm.hook.register_skills(register=self.register)
        except SkillRegistrationError:
            raise
        except Exception as exc:
            plugin = _raising_plugin(pm, exc)
            raise SkillRegistrationError(
                f"plugin {plugin!r} failed while registering its skills: {exc!r}; fix or "
                "uninstall it, or leave it out with SEEDX_LOAD_PLUGINS") from exc

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
        problems = declaration_problems(skill)
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

    def check_request(self, request: SkillRequest, get_image: Callable[[str], Any], *,
                      default_skill: str | None = None) -> None:
        """Let the turn's (or session's) skill refuse ``request`` before the model runs.

        Raises `SkillRequestError` with the skill's own words when it refuses, and
        `SkillError` when the check itself breaks (a skill's bug is not the user's mistake).
        """
        name = request.skill or default_skill
        if name is None:
            return
        try:
            self.get(name).check_request(request, get_image)
        except SkillRequestError:
            raise
        except Exception as exc:
            raise SkillError(f"skill {name!r} failed to check the request: {exc!r}") from exc

    def turn_options(self, skill: Skill, request: SkillRequest, variants: Any) -> dict[str, Any]:
        """``skill``'s wishes for the turn's options, checked (`TurnOptions` fields only)."""
        from .turn_options import TurnOptions

        try:
            wishes = skill.turn_options(request, variants)
        except SkillRequestError:
            raise
        except Exception as exc:
            raise SkillError(f"skill {skill.name!r} failed to choose its turn options: "
                             f"{exc!r}") from exc
        if not isinstance(wishes, dict):
            raise SkillError(f"skill {skill.name!r}: turn_options returned "
                             f"{type(wishes).__name__}, not a dict")
        unknown = sorted(set(wishes) - set(TurnOptions.model_fields))
        if unknown:
            raise SkillError(f"skill {skill.name!r}: turn_options gave unknown options {unknown}")
        return wishes

    def build_prompt(self, request: SkillRequest, *, default_skill: str | None = None) -> str:
        """The prompt for ``request``: phrased by the turn's (or session's) skill, if any."""
        name = request.skill or default_skill
        if name is None:
            return request.text
        skill = self.get(name)
        try:
            prompt = skill.build_prompt(request)
        except SkillRequestError:
            raise
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
        if model is None or payload_version(model) != action.version:
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
        # whichever of the worker finishing and the host giving up comes second reports what
        # the worker produced after the deadline (nobody reads ``events`` any more by then)
        state = {"finished": False, "abandoned": False}
        state_lock = threading.Lock()

        def report_late() -> None:
            late = [item for item in _drain(events) if item is not _DONE]
            skill_context.logger.warning(
                "finished %.1f s after its %gs deadline; discarded what it produced late "
                "(never attached to a later turn): %s", time.monotonic() - deadline,
                skill.deadline_s, "; ".join(_describe(e) for e, _ in late) or "nothing")

        def work_then_report() -> None:
            work()
            with state_lock:
                state["finished"] = True
                late = state["abandoned"]
            if late:
                report_late()

        threading.Thread(target=work_then_report, name=f"seedx-skill-{skill.name}",
                         daemon=True).start()
        while True:
            try:
                # timeout 0 still returns what is already queued, so a slow consumer of these
                # events does not turn a skill that finished in time into a late one
                item = events.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                with state_lock:
                    state["abandoned"] = True
                    finished = state["finished"]
                if finished:  # it finished between the deadline and this look
                    report_late()
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
            kept, refused = reported_artifacts(result.artifacts, context.artifact_dir)
            if refused:
                yield error(f"run({action.action!r}) reported files outside its artifact "
                            f"directory {context.artifact_dir}, left out: {list(refused)}")
            yield (ActionEvent(action=action, summary=result.message, artifacts=kept),
                   result.model_copy(update={"action": action}))

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
        if action.version != payload_version(model):
            raise SkillError(f"action {action.action!r} has version {action.version}, "
                             f"{model.__name__} is version {payload_version(model)}")
        try:
            payload = model.model_validate(action.payload)
        except ValidationError as exc:
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}"
                                for e in exc.errors())
            raise SkillError(f"invalid {action.action!r} payload: {details}") from None
        return Action(skill=action.skill, action=action.action, version=action.version,
                      payload=payload.model_dump(mode="json"))


def _raising_plugin(pm: pluggy.PluginManager, exc: BaseException) -> str:
    """The name of the plugin whose ``register_skills`` raised ``exc`` (from its traceback)."""
    codes = {}
    for impl in pm.hook.register_skills.get_hookimpls():
        function = getattr(impl.function, "__func__", impl.function)
        codes[getattr(function, "__code__", None)] = impl.plugin_name
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return codes[tb.tb_frame.f_code]
        tb = tb.tb_next
    return "unknown"


def _drain(events: queue.SimpleQueue) -> list[Any]:
    items = []
    while True:
        try:
            items.append(events.get_nowait())
        except queue.Empty:
            return items


def _describe(event: ActionEvent | ErrorEvent) -> str:
    if isinstance(event, ActionEvent):
        return f"action {event.action.action!r} ({event.summary or 'no summary'})"
    return f"error: {event.message}"
