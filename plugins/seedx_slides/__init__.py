"""Slides: "Make a slide about blue squares." becomes a real ``.pptx``, a slide per turn.

A built-in skill written like a third-party plugin: only the public ``seedx_agent`` names, and
the ``seedx`` entry point (pyproject.toml). docs/skills/slides.md is its user's page.

Laying out a slide is a fine-tune's job, so the skill declares ``variant_role = "slides"`` (the
Nano's ``slide`` adapter has it; the released SEED-X weights have no slide fine-tune). The model
reads the words only (``model_reads_images = False``): a picture the user gives, such as a
designer poster from earlier in the session (``"version:3"``), is for the slide, not for the
model to describe. The reply (`seedx_slides.layout` reads it) becomes one ``slide`` action.

Running it rebuilds the whole deck, every turn, from this skill's earlier actions in the session
(``context.earlier_actions``) plus this one, so a resumed or forked session gets the same deck
without the skill keeping state. Under the turn's skill directory it writes:

* ``deck.pptx``: every slide so far, 16:9 unless the request asks for 4:3;
* ``slide-NN.png``: a preview of each slide (`seedx_slides.preview`), with provenance;
* ``slides.json``: each slide's words, regions (canvas fractions, the model's bins, EMUs), its
  picture's source with provenance, its preview and its warnings.

A malformed reply (no title, a missing or off-canvas box, an image run cut off) still makes a
slide: default regions and empty text where the reply gave nothing usable, and warnings saying
so. Only a turn without words to make a slide from is refused.
"""

from __future__ import annotations

import re
from pathlib import Path


from seedx_agent import (Action, ActionResult, Provenance, Skill, SkillContext, SkillReply,
                         SkillRequestError, TextPart, hookimpl, save_png, write_json)

from .deck import build_deck, save_deck
from .geometry import DEFAULT_ASPECT, SLIDE_SIZES
from .layout import read_slide
from .payload import Picture, Slide
from .plan import SlidePlan, plan_slide
from .preview import draw_preview

DECK_NAME, JSON_NAME = "deck.pptx", "slides.json"
_ASPECT = re.compile(r"\b(16:9|4:3)\b")


def preview_name(number: int) -> str:
    return f"slide-{number:02d}.png"


class SlidesSkill(Skill):
    name = "slides"
    description = ("Lay out a slide from a request (title, bullets, a picture) and add it to "
                   "the session's deck: deck.pptx, a PNG preview per slide, slides.json.")
    consumes = frozenset()  # runs when named: a box in a reply is no sign of a slide
    variant_role = "slides"
    model_reads_images = False
    deadline_s = 60.0
    action_types = {"slide": Slide}

    def check_request(self, request, get_image) -> None:
        if not request.text.strip():
            raise SkillRequestError("say what the slide is about, e.g. 'Make a slide about "
                                    "blue squares.'")
        if len(request.images) > 1:
            raise SkillRequestError(f"a slide has one picture region; got {len(request.images)} "
                                    "images. Give one (e.g. version:3 for a poster of this "
                                    "session), or none to use the model's drawing")

    def to_actions(self, reply: SkillReply) -> list[Action]:
        read = read_slide([p for p in reply.parts if not _is_input(p)])
        warnings = list(dict.fromkeys(w for p in reply.parts if not _is_input(p)
                                      for w in p.warnings))
        warnings += read.warnings
        made = reply.generated_images
        drawing = _picture(made[0]) if made else None
        if len(made) > 1:
            warnings.append(f"the reply has {len(made)} pictures; the first is the slide drawing")
        given = _picture(reply.input_images[0]) if reply.input_images else None
        if drawing is None:
            warnings.append("the reply has no drawing of the slide" + (
                "" if given else ": the picture region has nothing to show"))
        aspect = _ASPECT.search(reply.request.text)
        text = " ".join(p.text.strip() for p in reply.parts
                        if isinstance(p, TextPart) and p.text.strip())
        return [self.make_action("slide", Slide(
            title=read.title, bullets=tuple(read.bullets), regions=read.regions,
            aspect=aspect.group(1) if aspect else DEFAULT_ASPECT, drawing=drawing, given=given,
            text=text, warnings=tuple(dict.fromkeys(warnings))))]

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        out = Path(context.artifact_dir)
        this: Slide = self.parse_payload(action)
        slides, skipped = [], []
        for earlier in context.earlier_actions:
            try:
                slides.append(self.parse_payload(earlier))
            except Exception as exc:  # an action of another version: keep the deck buildable
                skipped.append(f"an earlier slide could not be read ({type(exc).__name__}); "
                               "it is left out of the deck")
        slides.append(this)
        aspect = slides[0].aspect  # a deck has one slide size: the first slide's
        plans = [plan_slide(s, context.get_image) for s in slides]
        deck, placed = build_deck(plans, aspect)
        save_deck(deck, out / DECK_NAME)
        artifacts, records = [out / DECK_NAME], []
        for number, (plan, shapes) in enumerate(zip(plans, placed), start=1):
            made = _provenance(plan)
            save_png(draw_preview(plan, aspect), out / preview_name(number), made)
            artifacts.append(out / preview_name(number))
            records.append(_record(number, plan, shapes, made))
        warnings = tuple(dict.fromkeys([*plans[-1].warnings, *skipped]))
        write_json(out / JSON_NAME, {
            "skill": self.name, "action": action.action, "version": action.version,
            "deck": DECK_NAME, "aspect": aspect,
            "slide_size_emu": list(SLIDE_SIZES[aspect]), "slides": records,
            "warnings": list(warnings)})
        artifacts.append(out / JSON_NAME)
        title = this.title or "an untitled slide"
        message = f"slide {len(plans)} ({title}) added: {DECK_NAME} has {len(plans)} slide(s)"
        return ActionResult(message=message, artifacts=tuple(artifacts), warnings=warnings)


def _is_input(part) -> bool:
    return getattr(part, "role", None) == "input"


def _picture(part) -> Picture:
    return Picture(image_id=part.image_id, width=part.width, height=part.height,
                   provenance=part.provenance)


def _provenance(plan: SlidePlan) -> Provenance | None:
    """The drawing's provenance (the model and variant that laid the slide out), with the
    pictures the slide was made from as parents; None when the model drew nothing."""
    drawing = plan.slide.drawing
    if drawing is None or drawing.provenance is None:
        return None
    return drawing.provenance.model_copy(update={"parents": plan.parents})


def _record(number: int, plan: SlidePlan, shapes: dict, made: Provenance | None) -> dict:
    slide = plan.slide
    regions = {name: {**region.model_dump(mode="json"), "emu": shapes[name]}
               for name, region in slide.regions.items()}
    picture = None
    if plan.source is not None:
        picture = {**plan.source, "placed_emu": shapes.get("picture_placed")}
    return {"number": number, "title": slide.title, "bullets": list(slide.bullets),
            "regions": regions, "picture": picture, "preview": preview_name(number),
            "provenance": None if made is None else made.model_dump(mode="json"),
            "warnings": plan.warnings}




@hookimpl
def register_skills(register):
    register(SlidesSkill())
