"""The turn options chat's ``/set`` keeps: what every later turn carries, until ``/unset``.

They are one `TurnOptions`, so ``/set`` accepts exactly the names a script turn and
``Session.turn`` accept, checked by the same model (a bad value changes nothing). The values in
force are what was set, else the model's defaults (``runtime.render_defaults``) for rendering,
else the session's and the variant's; ``/set`` alone lists them and says where each comes from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..turn_options import RENDER_OPTIONS, TurnOptions
from .errors import CliError

if TYPE_CHECKING:
    from ..session import Session

FIELDS = tuple(TurnOptions.model_fields)
_UNSET_MEANS = {"skill": "none (/skill NAME)", "force_image": "off (/draw: the next turn only)",
                "edit": "off (/edit: the next turn only)",
                "about_image": "auto (a turn without pictures sees the latest generated one)"}


class ChatOptions:
    """The options set for ``session``'s later turns."""

    def __init__(self, session: "Session", options: TurnOptions | None = None):
        self.session = session
        self.options = options or TurnOptions()

    def set(self, name: str, value: Any) -> str:
        """Set one option (``value`` as typed: ``"5"`` for a float is fine); returns what
        changed. An unknown name or a bad value is a `CliError` and changes nothing."""
        self._check_name(name)
        if name == "skill" and value is not None:
            self._check_skill(value)
        if name == "variant" and value is not None:
            self._check_variant(value)
        try:
            self.options = self.options.merged(**{name: value})
        except ValidationError as exc:
            why = "; ".join(e["msg"] for e in exc.errors())
            raise CliError(f"/set {name}: {why} (got {value!r}); nothing changed") from None
        return f"{name} = {getattr(self.options, name)} for the following turns"

    def unset(self, name: str) -> str:
        self._check_name(name)
        kept = self.options.model_dump(exclude_unset=True)
        if name not in kept:
            return f"{name} was not set"
        kept.pop(name)
        self.options = TurnOptions.model_validate(kept)
        value, source = self.in_force(name)
        return f"{name} unset: {_show(value)} ({source})"

    def for_turn(self, **once: Any) -> TurnOptions:
        """The options of the next turn: those set, with ``once`` (``/draw``, ``/edit``) on top."""
        return self.options.merged(**once) if once else self.options

    def in_force(self, name: str) -> tuple[Any, str]:
        """The value ``name`` has for the next turn and where it comes from."""
        if name in self.options.model_fields_set:
            return getattr(self.options, name), "set"
        runtime = self.session.runtime
        if name in RENDER_OPTIONS:
            return getattr(runtime.render_defaults, name), "the model's default"
        if name == "max_new_tokens":
            if getattr(self.session, "max_new_tokens", None):
                return self.session.max_new_tokens, "the session's"
            variant = runtime.variants.get(self.session.variant)
            return variant.max_new_tokens, f"variant {variant.name}'s default"
        if name == "variant":
            return self.session.variant, "the session's (edit turns use SEED-X-Edit)"
        if name == "skill" and getattr(self.session.record, "default_skill", None):
            return self.session.record.default_skill, "the session's"
        return TurnOptions.model_fields[name].default, _UNSET_MEANS.get(name, "default")

    def listing(self) -> str:
        width = max(map(len, FIELDS))
        lines = ["turn options for the following turns (/set NAME VALUE, /unset NAME):"]
        for name in FIELDS:
            value, source = self.in_force(name)
            lines.append(f"  {name:<{width}}  {_show(value):<12}  {source}")
        return "\n".join(lines)

    def _check_name(self, name: str) -> None:
        if name not in TurnOptions.model_fields:
            raise CliError(f"no turn option {name!r}; options: {', '.join(FIELDS)}")

    def _check_skill(self, name: str) -> None:
        known = self.session.runtime.skill_host.skills
        if name not in known:
            raise CliError(f"no skill named {name!r}; installed: {', '.join(known) or 'none'}")

    def _check_variant(self, name: str) -> None:
        known = self.session.runtime.variants.names()
        if name not in known:
            raise CliError(f"no variant named {name!r}; variants: {', '.join(known)}")


def _show(value: Any) -> str:
    return "-" if value is None else str(value)
