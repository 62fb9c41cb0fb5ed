"""Model variants as data: which weights, grids, prompt template and de-tokenizer stage go together.

SEED-X was released as three fine-tunes of one architecture that are *not* interchangeable:
SEED-X (pretrained) has its own prompt formats and no chat, SEED-X-I is the multi-turn
instruction model (stage-1 de-tokenizer), SEED-X-Edit is single-turn, one 1x1-grid image, and
renders with the stage-2 de-tokenizer. A variant record says all of that in one place so the
runtime never special-cases a name. Plugins add variants (for example LoRA adapters on a shared
base) through the ``register_variants(register)`` hook; the released three are registered the same
way, by the default plugin `seedx_agent.default_plugins.variants`.

A variant's ``roles`` say which jobs it was trained for, in words a skill can ask for: a skill
with ``variant_role = "tryon"`` runs on a variant whose ``roles`` hold ``"tryon"``. Roles are
plain strings, so a plugin's LoRA can claim a job without the agent knowing about it; none of the
released three claims one (SEED-X's try-on weights were never released, so nothing claims
``"tryon"`` unless a model folder or a plugin says so).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_ROLE = re.compile(r"[a-z][a-z0-9_]*")  # like skill names: a role often is one
# A variant's name is a folder name under the model root (``<name>/llm``): no separators, and
# not starting with a dot, so neither ``.`` nor ``..`` (nor a hidden folder) can be one.
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
ALL_GRIDS = ("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2")
SINGLE_GRID = ("1x1",)


def _variant_name(name: str) -> str:
    if not _VARIANT_NAME.fullmatch(name):
        raise ValueError(f"a variant name is a folder name under the model root: 1-64 letters, "
                         f"digits, '_', '.' or '-', not starting with '.'; got {name!r}")
    return name


def _inside_root(path: str) -> str:
    """A path a variant loads from: relative to the model root and never leaving it (the root
    joined with an absolute path is that path; with ``..``, a folder beside the model)."""
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if ("\0" in path or not posix.parts or posix.is_absolute() or windows.anchor
            or ".." in windows.parts):
        raise ValueError(f"a variant's weights are a path relative to the model root, without "
                         f"'..'; got {path!r}")
    return path


class PromptTemplate(BaseModel):
    """How a turn is written (seedx.md §6). ``{instruction}`` is the image blocks + the user text.

    ``first_turn`` opens a conversation, ``next_turn`` continues one (SEED-X-I training data puts
    ``\\n`` before every later ``[INST]``); the answer follows each directly and only the final
    answer ends with EOS. ``force_image_suffix`` is appended to the prompt to force an image
    (the published answer for SEED-LLaMA, SEED-X issue #33).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    first_turn: str = "[INST] {instruction} [/INST]\n"
    next_turn: str = "\n[INST] {instruction} [/INST]\n"
    multi_turn: bool = True
    image_first: bool = True
    force_image_suffix: str = "<img>"

    def render(self, instruction: str, first: bool) -> str:
        return (self.first_turn if first else self.next_turn).format(instruction=instruction)


class AdapterWeights(BaseModel):
    """A LoRA adapter (peft folder) applied on the LLM of another variant."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    base: str
    path: str

    @field_validator("base")
    @classmethod
    def _base_name(cls, base: str) -> str:
        return _variant_name(base)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        return _inside_root(path)


class Variant(BaseModel):
    """One entry of the registry. Paths are relative to the model root (release layout)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    description: str = ""
    llm: str | AdapterWeights | None = None  # dense folder; None = "<name>/llm"
    agent: str | None = None  # None = "<name>/agent/pytorch_model.bin"
    resolution_grids: tuple[str, ...] = ALL_GRIDS
    template: PromptTemplate = PromptTemplate()
    detokenizer_stage: Literal[1, 2] = 1
    max_new_tokens: int = 512
    single_image_edit: bool = False  # True: each turn is its own single-turn prompt on one image
    roles: tuple[str, ...] = Field(default=(), description="jobs it was trained for, matched "
                                                         "against a skill's variant_role")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _variant_name(name)

    @field_validator("llm", "agent")
    @classmethod
    def _weights_inside_root(cls, path):
        return _inside_root(path) if isinstance(path, str) else path

    @field_validator("roles")
    @classmethod
    def _role_names(cls, roles: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in roles if not _ROLE.fullmatch(r)]
        if bad:
            raise ValueError(f"roles must match {_ROLE.pattern}, got {bad}")
        return tuple(dict.fromkeys(roles))

    @property
    def llm_path(self) -> str | AdapterWeights:
        return self.llm if self.llm is not None else f"{self.name}/llm"

    @property
    def agent_path(self) -> str:
        return self.agent if self.agent is not None else f"{self.name}/agent/pytorch_model.bin"


BUILTIN_VARIANTS = (
    Variant(name="seed_x", description="SEED-X pretrained: comprehension, grounding, generation",
            template=PromptTemplate(first_turn="Question: {instruction}\nAnswer:",
                                    next_turn="\nQuestion: {instruction}\nAnswer:",
                                    multi_turn=False),
            max_new_tokens=512),
    Variant(name="seed_x_i", description="SEED-X-I: multi-turn instruction model",
            max_new_tokens=512),
    Variant(name="seed_x_edit", description="SEED-X-Edit: single-turn, single-image editing",
            resolution_grids=SINGLE_GRID, detokenizer_stage=2, single_image_edit=True,
            template=PromptTemplate(multi_turn=False), max_new_tokens=512),
)


class VariantRegistry:
    """Open registry of variants; the host validates and de-duplicates what plugins register."""

    def __init__(self, variants: tuple[Variant, ...] | list[Variant] = BUILTIN_VARIANTS):
        self._variants: dict[str, Variant] = {}
        for variant in variants:
            self.register(variant)

    def register(self, variant: Variant | dict, *, replace: bool = False) -> Variant:
        variant = variant if isinstance(variant, Variant) else Variant.model_validate(variant)
        existing = self._variants.get(variant.name)
        if existing is not None and not replace:
            if existing == variant:  # the same record twice (two plugins, or a default): once
                return existing
            raise ValueError(f"variant {variant.name!r} is already registered, differently")
        self._variants[variant.name] = variant
        return variant

    def get(self, name: str) -> Variant:
        try:
            return self._variants[name]
        except KeyError:
            raise KeyError(f"unknown variant {name!r}; known: {sorted(self._variants)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._variants

    def __iter__(self):
        return iter(self._variants.values())

    def names(self) -> list[str]:
        return list(self._variants)

    def with_role(self, role: str) -> list[Variant]:
        """The variants that declare ``role``, in the order they were registered."""
        return [v for v in self._variants.values() if role in v.roles]

    def choose(self, name: str | None = None, *, edit: bool = False, role: str | None = None,
               preferred: str | None = None, default: str = "seed_x_i",
               needed_by: str = "") -> Variant:
        """The variant a turn runs on: the one it names; for an edit, the first single-image
        editor; for a skill that needs ``role``, the first variant with it (``default`` when it
        has it); else the skill's ``preferred`` one if registered; else ``default``.

        A variant without the ``role`` the turn needs is refused even when named: a try-on
        skill on a chat model draws nonsense, and that is better said than shown. Raises
        `LookupError` with a message for the user; ``needed_by`` names who needs the role.
        """
        who = needed_by or "this turn"
        if name is not None:
            variant = self.get(name)
        elif edit:
            editors = [v for v in self if v.single_image_edit]
            if not editors:
                raise LookupError("no edit variant is registered")
            variant = editors[0]
        elif role is not None:
            able = self.with_role(role)
            if not able:
                raise LookupError(f"{who} needs a variant with the role {role!r} and none is "
                                  f"registered: give one roles=({role!r},) (docs/plugins.md, "
                                  "register_variants)")
            variant = next((v for v in able if v.name == default), able[0])
        else:
            variant = self.get(preferred if preferred in self else default)
        if role is not None and role not in variant.roles:
            able = ", ".join(v.name for v in self.with_role(role)) or "none"
            raise LookupError(f"{who} needs a variant with the role {role!r}; {variant.name!r} "
                              f"does not declare it (variants that do: {able})")
        return variant


class ResidencyPolicy(BaseModel):
    """Which variants' LLMs stay loaded. Least recently used ones beyond ``max_resident`` are
    unloaded, except ``pinned`` ones. A 13B LLM is 26 GB in bf16, so the default keeps one."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    max_resident: int = Field(default=1, ge=1)
    pinned: tuple[str, ...] = ()

    def evictions(self, resident_lru: list[str], incoming: str) -> list[str]:
        """Variants to unload (oldest first) so that ``incoming`` fits."""
        keep = [v for v in resident_lru if v != incoming]
        excess = len(keep) + 1 - self.max_resident
        out = []
        for name in keep:
            if excess <= 0:
                break
            if name not in self.pinned:
                out.append(name)
                excess -= 1
        return out
