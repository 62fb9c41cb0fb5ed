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

    @model_validator(mode="after")
    def _no_empty_turn(self) -> "Script":
        """Refused here, before the model loads, as the session would refuse it at run time."""
        for index, turn in enumerate(self.turns):
            if not (turn.text.strip() or turn.images or turn.revert_to is not None
                    or turn.skill or self.skill or turn.force_image):
                raise ValueError(f"turn {index + 1} is empty: give it text, images, a skill, "
                                 "force_image or revert_to")
        return self

    def turn_options(self, turn: ScriptTurn) -> TurnOptions:
        """``turn``'s options over the script-wide rendering options."""
        wide = self.model_dump(include=set(RENDER_OPTIONS), exclude_none=True)
        return TurnOptions.model_validate({**wide, **turn.options().model_dump(exclude_unset=True)})


def load_script(path: Path) -> Script:
    """Read and check a script; every problem is a `CliError` naming the file and the field."""
    import yaml

    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_script_loader())
    except FileNotFoundError:
        raise CliError(f"script not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read script {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise CliError(f"{path} is not valid YAML: {exc}") from None
    except RecursionError:   # PyYAML composes nested collections recursively
        raise CliError(f"{path} is nested too deeply to be a seedx script") from None
    if not isinstance(raw, dict):
        raise CliError(f"{path}: a script is a mapping with a 'turns' list (docs/cli.md)")
    script = parse_script(raw, str(path))
    check_images(script, path.parent, str(path))
    return script


def _script_loader() -> type:
    """PyYAML's safe loader, except that a key given twice in one mapping is an error.

    Plain YAML keeps the last value silently, so a second ``turns:`` would drop every turn of
    the first, and a turn's second ``seed:`` the first seed: the kind of typo this loader exists
    to catch. Keys a ``<<`` merge brings in may still be overridden, as YAML intends.
    """
    import yaml

    class ScriptLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: set = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        repeated = key in seen
                    except TypeError:
                        continue   # an unhashable key: the safe loader reports it
                    if repeated:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping", node.start_mark,
                            f"found the key {key!r} twice", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return ScriptLoader


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
            if size is None and not _is_file(base / spec, where):
                raise CliError(f"{where}: image file not found: {base / spec}")


def _is_file(path: Path, where: str) -> bool:
    """``path.is_file()``, with the names no file system accepts reported as such."""
    if "\0" in str(path):
        raise CliError(f"{where}: {str(path)!r} contains a NUL character, which no file name can")
    try:
        return path.is_file()
    except OSError as exc:   # a name too long for the file system, say
        raise CliError(f"{where}: cannot look for the image file {str(path)[:200]!r}…: "
                       f"{exc.strerror or exc}") from None


def _problem(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "invalid_key":   # YAML keys may be numbers, booleans or null
        key = error.get("input", loc[-1])   # the key as written; loc holds its str()
        hint = " (YAML reads yes/no/on/off as booleans: quote it)" if isinstance(key, bool) else ""
        return f"{_loc(loc[:-1])}: the key {key!r} is not a name; keys are strings{hint}"
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
