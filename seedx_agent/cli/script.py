"""The ``seedx run`` script: a YAML mapping of session settings and turns, checked before use.

A script turn is a `TurnOptions` plus its text and pictures, so a turn takes exactly the options
``Session.turn`` takes, by the same names, and an option added there appears here with nothing
to change. The script itself may give the rendering options (`RENDER_OPTIONS`: ``seed``,
``num_inference_steps``, …) once for every turn. A turn's pictures are a list, or a mapping from
role to picture (``images: {person: a.png, garment: b.png}``), which is ``image_roles`` spelled
next to the files. Unknown keys are errors that name the key and
the turn, and the whole script (pictures included) is checked before a model is loaded.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model, model_validator

from ..turn_options import RENDER_OPTIONS, TurnOptions
from ..versions import VERSION_REF
from .errors import CliError
from .synthetic import MAX_SIDE, parse_synthetic


class ScriptTurn(TurnOptions):
    """One turn of a script: what the user says and shows, and the turn's `TurnOptions`."""

    text: str = ""
    images: tuple[str, ...] | dict[str, str] = Field(
        default=(), description="paths relative to the script's folder, or synthetic:WxH; "
                                "or version:N (a picture of this session); as a mapping, "
                                "keyed by each picture's role")
    revert_to: int | None = Field(
        default=None, ge=1, description="make version N the working image first (an edit "
                                        "after it branches); alone, the turn only reverts")

    @model_validator(mode="after")
    def _roles_named_once(self) -> "ScriptTurn":
        if isinstance(self.images, dict) and self.image_roles is not None:
            raise ValueError("images named by role (a mapping) and image_roles: give one of them")
        return self

    @property
    def image_specs(self) -> tuple[str, ...]:
        """The pictures, in the order given."""
        return tuple(self.images.values()) if isinstance(self.images, dict) else self.images

    def options(self) -> TurnOptions:
        """The turn's options, only those the script set (the roles of a mapping of images
        among them)."""
        options = self.model_dump(include=set(TurnOptions.model_fields), exclude_unset=True)
        if isinstance(self.images, dict):
            options["image_roles"] = tuple(self.images)
        return TurnOptions.model_validate(options)


# The rendering options, script-wide: the same names, types and bounds as in TurnOptions.
_ScriptRendering = create_model(
    "_ScriptRendering", __config__=ConfigDict(extra="forbid", frozen=True),
    **{name: (TurnOptions.model_fields[name].annotation, copy.copy(TurnOptions.model_fields[name]))
       for name in RENDER_OPTIONS})


class Script(_ScriptRendering):
    """A ``seedx run`` script (docs/cli.md): session settings, script-wide rendering options
    (each turn may override them) and the turns, in order."""

    title: str = ""
    model: str | None = None
    variant: str | None = Field(default=None, description="the session's variant")
    skill: str | None = Field(default=None, description="the session's default skill")
    turns: list[ScriptTurn] = Field(min_length=1)

    def turn_options(self, turn: ScriptTurn) -> TurnOptions:
        """``turn``'s options over the script-wide rendering options."""
        wide = self.model_dump(include=set(RENDER_OPTIONS), exclude_none=True)
        return TurnOptions.model_validate({**wide, **turn.options().model_dump(exclude_unset=True)})


def load_script(path: Path) -> Script:
    """Read and check a script; every problem is a `CliError` naming the file and the field."""
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"script not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read script {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CliError(f"{path}: a script is a mapping with a 'turns' list (docs/cli.md)")
    script = parse_script(raw, str(path))
    check_images(script, path.parent, str(path))
    return script


def parse_script(raw: dict[str, Any], source: str) -> Script:
    try:
        return Script.model_validate(raw)
    except ValidationError as exc:
        problems = "\n".join(f"  {_problem(e)}" for e in exc.errors())
        raise CliError(f"{source} is not a valid seedx script:\n{problems}") from None


def check_images(script: Script, base: Path, source: str) -> None:
    """Every picture a turn names exists (a file under ``base``, or a valid synthetic size)."""
    for t, turn in enumerate(script.turns):
        names = list(turn.images) if isinstance(turn.images, dict) else range(len(turn.images))
        for i, spec in zip(names, turn.image_specs):
            where = f"{source}: turns[{t}].images" + (f"[{i}]" if isinstance(i, int) else f".{i}")
            if VERSION_REF.match(spec.strip()):
                continue  # a picture of the session, looked up when the turn runs
            size = parse_synthetic(spec)
            if size is not None and not all(1 <= n <= MAX_SIDE for n in size):
                raise CliError(f"{where}: synthetic sizes are 1..{MAX_SIDE}, got {spec!r}")
            if size is None and not (base / spec).is_file():
                raise CliError(f"{where}: image file not found: {base / spec}")


def _problem(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        where, key = _loc(loc[:-1]), loc[-1]
        keys = ScriptTurn.model_fields if where.startswith("turns[") else Script.model_fields
        what = "a turn" if where.startswith("turns[") else "a script"
        return f"{where}: unknown key {key!r} ({what} takes: {', '.join(keys)})"
    return f"{_loc(loc)}: {error['msg']}"


def _loc(loc: tuple) -> str:
    text = ""
    for item in loc:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or "(script)"
