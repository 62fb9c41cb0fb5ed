"""Each skill as a LangChain tool, so an agent built on another model can call SEED-X's skills.

A tool call is one SEED-X turn on a fresh session with the skill named: the request's text and
pictures (file paths) in, and back, as LangChain's ``content_and_artifact`` pair, a short text
for the calling model (what SEED-X said and what each action did) and, as the artifact, what a
program wants: the typed action payloads (the skill's own pydantic models), the raw actions and
the paths of the files the skill wrote.
"""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field


class SkillToolInput(BaseModel):
    request: str = Field(description="what to ask SEED-X, in words")
    images: list[str] = Field(default_factory=list,
                              description="paths of the pictures the request is about")


def skill_tool(runtime: Any, name: str, **turn_options: Any) -> StructuredTool:
    """The skill ``name`` of ``runtime`` as a tool; ``turn_options`` (``seed=``,
    ``num_inference_steps=`` …) go to every turn it runs."""
    host = runtime.skill_host
    skill = host.get(name)

    def run(request: str, images: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        from seedx_agent import ActionEvent, TurnDone

        session = runtime.open_session()
        summaries, done = [], None
        for event in session.turn(request, list(images or []), skill=name, **turn_options):
            if isinstance(event, ActionEvent) and event.summary:
                summaries.append(event.summary)
            elif isinstance(event, TurnDone):
                done = event
        if done is None or not done.ok:
            reasons = "; ".join(e.message for e in done.errors) if done else ""
            raise RuntimeError(f"the {name} skill failed: {reasons or 'no reply'}")
        said = "".join(p.text for p in done.parts if p.type == "text").strip()
        content = " ".join(x for x in [said, *summaries] if x) or f"the {name} skill ran"
        artifact = {"skill": name, "session_id": session.id,
                    "payloads": [host.parse_payload(a) for a in done.actions],
                    "actions": list(done.actions), "artifacts": list(done.artifacts),
                    "parts": list(done.parts)}
        return content, artifact

    return StructuredTool.from_function(
        func=run, name=f"seedx_{name}", description=skill.description or f"the {name} skill",
        args_schema=SkillToolInput, response_format="content_and_artifact")


def skill_tools(runtime: Any, **turn_options: Any) -> list[StructuredTool]:
    """Every skill the runtime's plugins registered, as tools (`skill_tool`)."""
    return [skill_tool(runtime, name, **turn_options) for name in sorted(runtime.skill_host.skills)]

