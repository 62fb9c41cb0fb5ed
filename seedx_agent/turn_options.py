"""What one turn may set, by one name from the API, a script and chat down to the de-tokenizer.

``Session.turn(text, images, seed=7, guidance_scale=5.0)``, a script turn's ``seed: 7`` and chat's
``/set guidance_scale 5`` all build the same `TurnOptions`; the session fills what was left unset
from the loaded model's `RenderDefaults` (`TurnOptions.resolved`) and hands the result, unchanged,
to `Runtime.render`, which passes the fields by the same names to the de-tokenizer. The names are
diffusers' (``num_inference_steps``, ``guidance_scale``, ``image_guidance_scale``), and a picture's
`Provenance` records them under the same names.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**64 - 1
"""The largest seed a torch generator takes; a larger one would fail only when drawing."""


class RenderDefaults(BaseModel):
    """How the loaded model draws unless a turn says otherwise.

    The official scripts' values by default; a model folder may give its own (the Nano's manifest
    records the ones its evaluation chose), and presets set them on the runtime.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    num_inference_steps: int = Field(default=50, ge=1)
    guidance_scale: float = Field(default=7.5, ge=0, allow_inf_nan=False)
    image_guidance_scale: float = Field(default=1.5, ge=0, allow_inf_nan=False)


class TurnOptions(BaseModel):
    """Everything a turn may set besides its text and images. ``None`` means "the default":
    the session's, else the variant's, else the model's `RenderDefaults`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    skill: str | None = Field(default=None, description="the skill that phrases the prompt and "
                                                          "acts on the reply")
    variant: str | None = Field(default=None, description="the model variant (e.g. seed_x_edit)")
    force_image: bool = Field(default=False, description="make the reply start with a picture")
    edit: bool = Field(default=False, description="edit the turn's (or the latest) image")
    about_image: bool | None = Field(default=None, description="attach the latest generated "
                                                                 "image when the turn has none")
    image_roles: tuple[str, ...] | None = Field(
        default=None, description="the role of each of the turn's images, in the order given "
                                  "(garment, person), for a skill that names its images")
    steps: int | None = Field(
        default=None, ge=1, le=64, description="run the turn this many times, each step reading "
                                               "the picture the step before drew (a story)")
    max_new_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED,
                             description="the de-tokenizer's noise seed")
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    image_guidance_scale: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @field_validator("image_roles", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        """``person,garment`` as chat's ``/set`` types it."""
        if isinstance(value, str):
            return tuple(role.strip() for role in value.split(",") if role.strip())
        return value

    def resolved(self, defaults: RenderDefaults) -> "TurnOptions":
        """These options with every unset rendering value taken from ``defaults``."""
        return self.model_copy(update={name: getattr(defaults, name)
                                       for name in RenderDefaults.model_fields
                                       if getattr(self, name) is None})

    def merged(self, **changes) -> "TurnOptions":
        """A copy with ``changes`` applied and validated (unknown names are refused)."""
        return TurnOptions.model_validate({**self.model_dump(exclude_unset=True), **changes})


RENDER_OPTIONS = tuple(RenderDefaults.model_fields)
