"""The designer: SEED-X-I as an interactive designer that explains, suggests and edits.

A built-in skill written like a third-party plugin: only the public ``seedx_agent`` names, the
``seedx`` entry point (pyproject.toml), one ``register_skills`` hook. docs/skills/designer.md is
its user's page.

One request is one of three jobs (`seedx_designer.kinds` has the rule, on the words and on
whether the user gave a picture), and each job runs on the model that can do it, which the
skill asks for in ``turn_options`` (``variant_role`` stays None: no one variant does all three):

* **design** ("Design a poster with a red circle."): the variant with the ``designer`` role
  (the Nano's ``designer`` adapter), else the session's own (SEED-X-I), drawing from the words
  alone (``about_image=False``: an earlier picture is not a reference for a new design). The
  reply's words are the design intent, its picture the poster.
* **suggest** ("How could this image be improved?"): the designer variant as an edit (stage 2,
  the user's picture, or the working image, as the condition): the suggestion and the picture
  with it applied.
* **edit** ("Make the circle blue."): an edit on the default editor (SEED-X-Edit) of the given
  picture, or of ``Session.working_image()``. Each edit's output is the next one's source; the
  session numbers every picture as a version with its parent (``Session.versions()``), and
  ``Session.revert(n)`` makes an earlier one the source again, so a chain branches. The action
  records the source, the picture made and its provenance parent; ``run`` follows the session's
  earlier designer actions back from the source to write the whole chain into ``edit.json``.

A reply without its picture (the model answered in words, the image run was cut off) is never a
lost turn: the action still runs and writes the note without the picture, with warnings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any


from seedx_agent import (Action, ActionResult, ImagePart, Skill, SkillContext, SkillReply,
                         SkillRequest, TextPart, hookimpl, load_picture, provenance_json, save_png,
                         write_json)

from .files import before_after, how_made, save_text
from .kinds import kind_of
from .payloads import Design, Drawn, Edit, Picture, Suggest

log = logging.getLogger(__name__)

ROLE = "designer"  # the variant role of a designer fine-tune (the Nano's `designer` adapter)


class DesignerSkill(Skill):
    name = "designer"
    description = ("Design a poster with its intent, suggest and draw an improvement of a "
                   "picture, or edit the working image (an edit chain with versions).")
    consumes = frozenset()  # runs when named: a picture in a reply is no sign of a design
    deadline_s = 30.0
    action_types = {"design": Design, "suggest": Suggest, "edit": Edit}

    def turn_options(self, request: SkillRequest, variants: Any) -> dict[str, Any]:
        kind = kind_of(request.text, bool(request.images))
        designers = variants.with_role(ROLE)
        designer = {"variant": designers[0].name} if designers else {}
        if kind == "design":
            return {**designer, "about_image": False}
        if kind == "suggest":
            return {**designer, "edit": True}
        return {"edit": True}

    def to_actions(self, reply: SkillReply) -> list[Action]:
        text = " ".join(p.text.strip() for p in reply.parts
                        if isinstance(p, TextPart) and p.text.strip())
        # what went wrong in the reply (an image run cut off, a stray token) stays visible
        warnings = list(dict.fromkeys(w for p in reply.parts if getattr(p, "role", None) != "input"
                                      for w in p.warnings))
        given = any(isinstance(p, ImagePart) and p.role == "input" for p in reply.parts)
        kind = kind_of(reply.request.text, given)
        drawn = _first_drawn(reply, warnings)
        if kind == "design" and drawn is not None and drawn.provenance is not None \
                and drawn.provenance.detokenizer_stage == 2 and reply.input_images:
            kind = "edit"  # the user asked for an edit (edit=True): the picture says so
        if kind == "design":
            if not text:
                warnings.append("the reply has no words: the design has no intent")
            return [self.make_action("design", Design(
                request=reply.request.text, intent=text, poster=drawn, warnings=_w(warnings)))]
        source = _picture(reply.input_images[0]) if reply.input_images else None
        if source is None:
            warnings.append("the turn has no picture to start from")
        parent = drawn.provenance.parents[0] if drawn and drawn.provenance \
            and drawn.provenance.parents else None
        if drawn is not None and source is not None and parent != source.image_id:
            warnings.append("the picture was not drawn from the source (its provenance's first "
                            "parent is not the source picture)")
        if kind == "suggest":
            if not text:
                warnings.append("the reply has no words: there is no suggestion")
            return [self.make_action("suggest", Suggest(
                request=reply.request.text, suggestion=text, before=source, after=drawn,
                warnings=_w(warnings)))]
        return [self.make_action("edit", Edit(
            instruction=reply.request.text, text=text, source=source, edited=drawn,
            parent_id=parent, warnings=_w(warnings)))]

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        out = Path(context.artifact_dir)
        payload = self.parse_payload(action)
        write = {"design": _run_design, "suggest": _run_suggest, "edit": _run_edit}[action.action]
        message, artifacts = write(payload, context, out)
        return ActionResult(message=message, artifacts=tuple(artifacts),
                            warnings=payload.warnings)


# --- one action's files -------------------------------------------------------------------------

def _run_design(design: Design, context: SkillContext, out: Path):
    artifacts = []
    if design.poster is not None:
        artifacts.append(save_png(load_picture(context.get_image, design.poster), out / "poster.png",
                                  design.poster.provenance))
    note = ["# Design", "", f"**Asked:** {design.request}", "",
            "## Intent", "", design.intent or "_The model gave no intent._", "",
            "## How it was made", "", *how_made(design.poster and design.poster.provenance)]
    note += _warning_lines(design.warnings)
    artifacts.append(save_text("\n".join(note) + "\n", out / "design.md"))
    artifacts.append(_json(out / "design.json", {
        "skill": "designer", "action": "design", "version": Design.version,
        **design.model_dump(mode="json"),
        "files": {"poster": "poster.png" if design.poster else None, "note": "design.md"}}))
    message = ("designed: poster.png, design.md" if design.poster is not None else
               "no picture came back: design.md has the intent only")
    return message, artifacts


def _run_suggest(suggest: Suggest, context: SkillContext, out: Path):
    before = load_picture(context.get_image, suggest.before) if suggest.before else None
    after = load_picture(context.get_image, suggest.after) if suggest.after else None
    made = suggest.after.provenance if suggest.after else None
    panels = [p.image_id for p in (suggest.before, suggest.after) if p is not None]
    strip_made = made.model_copy(update={"parents": tuple(panels)}) if made else None
    artifacts = [save_png(after, out / "after.png", made)] if after is not None else []
    artifacts.append(save_png(before_after(before, after), out / "before_after.png", strip_made))
    note = ["# Suggestion", "", f"**Asked:** {suggest.request}", "",
            suggest.suggestion or "_The model gave no suggestion._", "",
            "## The suggestion drawn", "", *how_made(made)]
    note += _warning_lines(suggest.warnings)
    artifacts.append(save_text("\n".join(note) + "\n", out / "suggestion.md"))
    artifacts.append(_json(out / "suggestion.json", {
        "skill": "designer", "action": "suggest", "version": Suggest.version,
        **suggest.model_dump(mode="json"),
        "files": {"after": "after.png" if after is not None else None,
                  "before_after": "before_after.png", "note": "suggestion.md"},
        "before_after": {"panels": ["before", "after"], "provenance": provenance_json(strip_made)}}))
    message = ("suggested an improvement: after.png, before_after.png, suggestion.md" if after is not None
               else "no picture came back: suggestion.md has the suggestion only")
    return message, artifacts


def _run_edit(edit: Edit, context: SkillContext, out: Path):
    artifacts = []
    if edit.edited is not None:
        artifacts.append(save_png(load_picture(context.get_image, edit.edited), out / "edited.png",
                                  edit.edited.provenance))
    artifacts.append(_json(out / "edit.json", {
        "skill": "designer", "action": "edit", "version": Edit.version,
        **edit.model_dump(mode="json"),
        "chain": _chain(edit.source.image_id if edit.source else None, context.earlier_actions),
        "files": {"edited": "edited.png" if edit.edited else None}}))
    message = ("edited: edited.png" if edit.edited is not None
               else "no picture came back: edit.json records the request only")
    return message, artifacts


def _chain(source_id: str | None, earlier: tuple[Action, ...]) -> list[dict[str, Any]]:
    """The pictures the source came from, oldest first, ending with the source: followed back
    through this skill's earlier actions (the poster, then each edit), so a branch after a
    revert shows the path it took, not every edit of the session."""
    made_by: dict[str, tuple[str, str | None, str]] = {}  # picture -> (action, source, request)
    for action in earlier:
        p = action.payload
        if action.action == "design" and p.get("poster"):
            made_by[p["poster"]["image_id"]] = ("design", None, p["request"])
        elif action.action == "suggest" and p.get("after"):
            made_by[p["after"]["image_id"]] = ("suggest", (p.get("before") or {}).get("image_id"),
                                               p["request"])
        elif action.action == "edit" and p.get("edited"):
            made_by[p["edited"]["image_id"]] = ("edit", (p.get("source") or {}).get("image_id"),
                                                p["instruction"])
    chain, seen, at = [], set(), source_id
    while at is not None and at not in seen:
        seen.add(at)
        how, parent, said = made_by.get(at, ("given", None, ""))
        chain.append({"image_id": at, "made_by": how, "request": said})
        at = parent
    return chain[::-1]


def _first_drawn(reply: SkillReply, warnings: list[str]) -> Drawn | None:
    made = reply.generated_images
    if not made:
        warnings.append("the reply has no picture")
        return None
    if len(made) > 1:
        warnings.append(f"the reply has {len(made)} pictures; the first is kept")
    first = made[0]
    return Drawn(image_id=first.image_id, width=first.width, height=first.height,
                 provenance=first.provenance)


def _picture(part: ImagePart) -> Picture:
    return Picture(image_id=part.image_id, width=part.width, height=part.height)




def _warning_lines(warnings: tuple[str, ...]) -> list[str]:
    return ["", "## Warnings", "", *(f"- {w}" for w in warnings)] if warnings else []


def _json(path: Path, data: dict) -> Path:
    write_json(path, data)
    return path


def _w(warnings: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(warnings))


@hookimpl
def register_skills(register):
    register(DesignerSkill())
