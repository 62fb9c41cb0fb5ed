"""Story: a scene and "Continue the story." in, one sentence and the next scene out.

A built-in skill written like a third-party plugin: it uses only the public ``seedx_agent``
names and is installed through the ``seedx`` entry point (pyproject.toml). docs/skills/story.md
is its user's page.

Only a fine-tune taught to tell stories answers in the story's form, so the skill declares
``variant_role = "story"`` (the Nano's ``story`` adapter). One turn is one step of the story;
looping is the session's (``steps=N``: N recorded turns, each reading the picture the one
before drew, `seedx_agent.steps`), so each step keeps its own events, progress, cancel and row
in the store, and the skill never needs to know how many steps were asked for.

The reply becomes one ``step`` action. Running it rebuilds the whole story so far from the
session's earlier ``step`` actions (`seedx_story.chain` says which steps belong to it), so a
resumed or forked session writes the same book without the skill keeping any state. Under the
skill's artifact directory of the turn:

* ``storybook.html``: one self-contained page (the pictures embedded as data URIs), the first
  scene, then each sentence with its picture (`seedx_story.book`);
* ``story.json``: the steps with their image ids, sentences, provenance and warnings;
* ``step-NN.png``: each step's next scene, with its provenance in a ``seedx:provenance`` text
  chunk (NN counts from 01; a step that drew nothing has no file).

A step without a picture (the model only spoke, or an image run was cut off) is not a failure
of the turn: the action still runs, the book shows the sentence beside a "no picture"
placeholder, and the warnings say why.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, ValidationError

from seedx_agent import (Action, ActionResult, Provenance, Skill, SkillContext, SkillReply,
                         SkillRequestError, TextPart, atomic_write, hookimpl, load_picture,
                         provenance_json, save_png, write_json)

from .book import Page, storybook_html
from .chain import story_of

INSTRUCTION = "Continue the story."  # what the Nano's story adapter was taught
BOOK_NAME, JSON_NAME = "storybook.html", "story.json"
NO_PICTURE = ("the reply has no picture: the step has no next scene, and the storybook shows "
              "a placeholder")
NO_SENTENCE = "the reply has no sentence: the storybook shows the picture alone"


class Picture(BaseModel):
    """An image of the turn, by content hash."""

    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Drawn(Picture):
    """The picture the model drew, and how."""

    provenance: Provenance | None = None


class Step(BaseModel):
    """One step: ``scene`` continued by ``sentence`` into ``next_scene`` (None: none drawn)."""

    version: ClassVar[int] = 1
    scene: Picture
    sentence: str = ""
    next_scene: Drawn | None = None
    warnings: tuple[str, ...] = ()


def step_file(number: int) -> str:
    return f"step-{number:02d}.png"


class StorySkill(Skill):
    name = "story"
    description = ("Continue a story from a scene: one sentence and the next scene per step "
                   "(steps=N loops), as a self-contained HTML storybook, story.json and PNGs.")
    consumes = frozenset()  # runs when named: a picture in a reply is no sign of a story
    variant_role = "story"
    deadline_s = 30.0
    action_types = {"step": Step}

    def check_request(self, request, get_image) -> None:
        if len(request.images) != 1:
            raise SkillRequestError(
                f"a story step continues one scene; got {len(request.images)} images. Give the "
                "first scene (or none, to continue from the session's latest picture)")

    def build_prompt(self, request):
        return request.text.strip() or INSTRUCTION

    def to_actions(self, reply: SkillReply) -> list[Action]:
        if len(reply.input_images) != 1:
            raise ValueError(f"a story step continues one scene; the turn has "
                             f"{len(reply.input_images)}")
        (given,) = reply.input_images
        scene = Picture(image_id=given.image_id, width=given.width, height=given.height)
        # what went wrong in the reply (an image run cut off, a stray token) stays visible
        warnings = list(dict.fromkeys(w for p in reply.parts if getattr(p, "role", None) != "input"
                                      for w in p.warnings))
        sentence = " ".join(p.text.strip() for p in reply.parts
                            if isinstance(p, TextPart) and p.text.strip())
        if not sentence:
            warnings.append(NO_SENTENCE)
        made = reply.generated_images
        next_scene = None
        if not made:
            warnings.append(NO_PICTURE)
        else:
            first = made[0]
            next_scene = Drawn(image_id=first.image_id, width=first.width, height=first.height,
                               provenance=first.provenance)
            if len(made) > 1:
                warnings.append(f"the reply has {len(made)} pictures; the first is the next scene")
        return [self.make_action("step", Step(scene=scene, sentence=sentence,
                                              next_scene=next_scene, warnings=tuple(warnings)))]

    def run(self, action: Action, context: SkillContext) -> ActionResult:
        this: Step = self.parse_payload(action)
        earlier, unreadable = [], 0
        for old in context.earlier_actions:
            if old.action != "step" or old.version != Step.version:
                unreadable += 1
                continue
            try:
                earlier.append(Step.model_validate(old.payload))
            except ValidationError:
                unreadable += 1
        steps = story_of(earlier, this)
        out = Path(context.artifact_dir)
        first = steps[0].scene
        pages, records, artifacts = [], [], []
        for number, step in enumerate(steps, start=1):
            picture, file = None, None
            if step.next_scene is not None:
                picture = load_picture(context.get_image, step.next_scene)
                file = step_file(number)
                save_png(picture, out / file, step.next_scene.provenance)
                artifacts.append(out / file)
            pages.append(Page(sentence=step.sentence, picture=picture, warnings=step.warnings))
            records.append({
                "step": number, "scene": step.scene.image_id, "sentence": step.sentence,
                "next_scene": None if step.next_scene is None else {
                    "file": file, **step.next_scene.model_dump(mode="json",
                                                               exclude={"provenance"})},
                "provenance": provenance_json(step.next_scene.provenance if step.next_scene else None),
                "warnings": list(step.warnings)})
        book_warnings = [f"{unreadable} earlier story action(s) of another version were left "
                         "out"] if unreadable else []
        with atomic_write(out / BOOK_NAME) as tmp:
            Path(tmp).write_text(storybook_html(load_picture(context.get_image, first), pages), encoding="utf-8")
        artifacts.append(out / BOOK_NAME)
        write_json(out / JSON_NAME, {
            "skill": self.name, "action": action.action, "version": action.version,
            "first_scene": first.model_dump(mode="json"), "steps": records,
            "warnings": book_warnings})
        artifacts.append(out / JSON_NAME)
        drawn = sum(1 for s in steps if s.next_scene is not None)
        message = (f"the story has {len(steps)} step(s), {drawn} with a picture: {BOOK_NAME}"
                   if this.next_scene is not None else
                   f"this step drew no picture; {BOOK_NAME} shows a placeholder for it")
        return ActionResult(message=message, artifacts=tuple(artifacts),
                            warnings=this.warnings + tuple(book_warnings))








@hookimpl
def register_skills(register):
    register(StorySkill())
