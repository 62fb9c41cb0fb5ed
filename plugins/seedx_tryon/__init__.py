"""Try-on: a person and a garment in, the person wearing the garment out.

A built-in skill written like a third-party plugin: it uses only the public ``seedx_agent``
names and is installed through the ``seedx`` entry point (pyproject.toml). docs/skills/tryon.md
is its user's page.

Only a fine-tune trained for it can dress a person, so the skill declares ``variant_role =
"tryon"`` and the session runs it on a variant whose ``roles`` hold ``"tryon"`` (the Nano's
``tryon`` adapter; on the released stack a SEED-X-Edit-style checkpoint or LoRA you register
with that role, since SEED-X's own try-on weights were never released). Such a variant renders
with the stage-2 de-tokenizer conditioned on the turn's first image, so the order of the two
pictures is the whole contract: ``image_roles = ("person", "garment")``. The user gives them in
that order or names them (``image_roles=``, or ``images={"person": …, "garment": …}``), and the
session puts them in that order before the model reads them. ``check_request`` then refuses,
before anything is drawn, a pair that looks swapped (`seedx_tryon.pictures` says how it tells)
or the same picture twice.

The reply becomes one ``dress`` action. Running it writes, under the skill's artifact directory:

* ``result.png``: the dressed person, as the model drew it;
* ``strip.png``: person | garment | result, side by side at one height, labelled;
* ``tryon.json``: the inputs, the model's words, every artifact with its provenance (the
  `seedx_agent.Provenance` fields: ``model``, ``variant``, ``seed``, …, ``parents``) and the
  warnings. The PNGs carry the same provenance in a ``seedx:provenance`` text chunk.

A reply without a picture (the model answered in words, or an image run was cut off) is not a
failure of the turn: the action still runs, writes a strip with an empty result panel and a
``tryon.json`` whose ``result`` is null, and says why in its warnings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from seedx_agent import (Action, ActionResult, Provenance, Skill, SkillContext, SkillReply,
                         SkillRequestError, TextPart, hookimpl, load_picture, provenance_json,
                         save_png, write_json)

from .pictures import colour_count, strip

log = logging.getLogger(__name__)

INSTRUCTION = "Put this garment on the person."  # what the Nano's try-on adapter was taught
RESULT_NAME, STRIP_NAME, JSON_NAME = "result.png", "strip.png", "tryon.json"


class Picture(BaseModel):
    """An image of the turn, by content hash."""

    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Dressed(Picture):
    """The picture the model drew, and how."""

    provenance: Provenance | None = None


class Dress(BaseModel):
    """Put ``garment`` on ``person``; ``result`` is what the model drew (None: it drew nothing)."""

    version: ClassVar[int] = 1
    person: Picture
    garment: Picture
    result: Dressed | None = None
    text: str = Field(default="", description="what the model said alongside its picture")
    warnings: tuple[str, ...] = ()


class TryOnSkill(Skill):
    name = "tryon"
    description = ("Dress the person (first image) in the garment (second image): the result, "
                   "a person | garment | result strip and provenance JSON.")
    consumes = frozenset()  # runs when named: a picture in a reply is no sign of a try-on
    variant_role = "tryon"
    image_roles = ("person", "garment")
    deadline_s = 30.0
    action_types = {"dress": Dress}

    def check_request(self, request, get_image) -> None:
        if len(request.images) != 2:  # the session checks this first; a direct caller may not
            raise SkillRequestError(f"a try-on takes 2 images, person then garment; got "
                                    f"{len(request.images)}")
        person, garment = request.images
        if person.image_id == garment.image_id:
            raise SkillRequestError("the person and the garment are the same picture; give a "
                                    "picture of a person and one of a garment")
        on_person = colour_count(get_image(person.image_id))
        on_garment = colour_count(get_image(garment.image_id))
        if on_garment > on_person:
            raise SkillRequestError(
                f"the images look swapped: the picture given as the garment has more colours "
                f"({on_garment}) than the one given as the person ({on_person}), and a person "
                "has more (skin, hair, legs, background) than a garment on its plain ground. "
                "Give the person first and the garment second, or name them: "
                "image_roles=('person', 'garment') in the API, images: {person: …, garment: …} "
                "in a script")

    def build_prompt(self, request):
        return request.text.strip() or INSTRUCTION

    def to_actions(self, reply: SkillReply) -> list[Action]:
        if len(reply.input_images) != 2:
            raise ValueError(f"a try-on needs a person and a garment picture; the turn has "
                             f"{len(reply.input_images)}")
        person, garment = (Picture(image_id=p.image_id, width=p.width, height=p.height)
                           for p in reply.input_images)
        # what went wrong in the reply (an image run cut off, a stray token) stays visible
        warnings = list(dict.fromkeys(w for p in reply.parts if not _is_input(p)
                                      for w in p.warnings))
        made = reply.generated_images
        result = None
        if not made:
            warnings.append("the reply has no picture: there is no result, and the strip's "
                            "result panel is empty")
        else:
            first = made[0]
            result = Dressed(image_id=first.image_id, width=first.width, height=first.height,
                             provenance=first.provenance)
            if len(made) > 1:
                warnings.append(f"the reply has {len(made)} pictures; the first is the result")
            parents = first.provenance.parents if first.provenance else ()
            if parents[:1] != (person.image_id,):
                warnings.append("the result was not drawn conditioned on the person (its "
                                "provenance's first parent is not the person picture)")
        text = " ".join(p.text.strip() for p in reply.parts
                        if isinstance(p, TextPart) and p.text.strip())
        return [self.make_action("dress", Dress(person=person, garment=garment, result=result,
                                                text=text, warnings=tuple(warnings)))]

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        dress: Dress = self.parse_payload(action)
        out = Path(context.artifact_dir)
        person = load_picture(context.get_image, dress.person)
        garment = load_picture(context.get_image, dress.garment)
        result = load_picture(context.get_image, dress.result) if dress.result is not None else None
        made = dress.result.provenance if dress.result is not None else None
        artifacts, record = [], {}
        if result is not None:
            save_png(result, out / RESULT_NAME, made)
            artifacts.append(out / RESULT_NAME)
            record[RESULT_NAME] = {"image_id": dress.result.image_id,
                                   "provenance": provenance_json(made)}
        # the strip shows the result's pixels next to its inputs: the result's provenance, with
        # all three panels as parents
        panels = [dress.person.image_id, dress.garment.image_id] + (
            [dress.result.image_id] if result is not None else [])
        strip_made = made.model_copy(update={"parents": tuple(panels)}) if made else None
        save_png(strip([(person, "person"), (garment, "garment"), (result, "result")]),
                  out / STRIP_NAME, strip_made)
        artifacts.append(out / STRIP_NAME)
        record[STRIP_NAME] = {"panels": ["person", "garment", "result"],
                              "provenance": provenance_json(strip_made)}
        write_json(out / JSON_NAME, {
            "skill": self.name, "action": action.action, "version": action.version,
            "person": dress.person.model_dump(mode="json"),
            "garment": dress.garment.model_dump(mode="json"),
            "result": None if dress.result is None else {
                "file": RESULT_NAME, **dress.result.model_dump(mode="json",
                                                               exclude={"provenance"})},
            "text": dress.text, "artifacts": record, "warnings": list(dress.warnings)})
        artifacts.append(out / JSON_NAME)
        message = (f"dressed the person in the garment: {RESULT_NAME}, {STRIP_NAME}"
                   if result is not None else f"no picture came back: {STRIP_NAME} shows the "
                                              "person and the garment only")
        return ActionResult(message=message, artifacts=tuple(artifacts), warnings=dress.warnings)


def _is_input(part) -> bool:
    return getattr(part, "role", None) == "input"








@hookimpl
def register_skills(register):
    register(TryOnSkill())
