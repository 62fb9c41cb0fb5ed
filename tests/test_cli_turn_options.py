"""Turn options from a script and from chat's ``/set`` reach the de-tokenizer unchanged.

The de-tokenizer's ``generate`` is wrapped to record its keyword arguments, so these tests see
the values at the end of the whole path (script or REPL -> `TurnOptions` -> ``Session.turn`` ->
``Runtime.render`` -> the de-tokenizer), and that the picture's provenance says the same.
"""

from __future__ import annotations

import io
import json
import sys

import pytest

from seedx_agent import cli
from seedx_agent.cli.model import load_runtime
from seedx_agent.cli.script import ScriptTurn, parse_script
from seedx_agent.store import SessionStore
from seedx_agent.turn_options import RENDER_OPTIONS, TurnOptions


@pytest.fixture
def runtime():
    """The tiny runtime, the one every in-process CLI call in this test run shares."""
    return load_runtime("tiny", None)


@pytest.fixture
def detokenizer_calls(runtime, monkeypatch):
    """The keyword arguments of every de-tokenizer ``generate`` call, stage included."""
    calls: list[dict] = []
    for stage in (1, 2):
        adapter = runtime.stack.detokenizer(stage)

        def record(*args, _generate=adapter.generate, _stage=stage, **kwargs):
            calls.append({"stage": _stage, **kwargs})
            return _generate(*args, **kwargs)

        monkeypatch.setattr(adapter, "generate", record)
    return calls


def test_a_script_turn_takes_exactly_the_turn_options():
    assert set(ScriptTurn.model_fields) == set(TurnOptions.model_fields) | {"text", "images",
                                                                          "revert_to"}
    for name, field in TurnOptions.model_fields.items():  # same types and bounds, not copies
        assert ScriptTurn.model_fields[name].annotation == field.annotation
    script = parse_script({"guidance_scale": 2.5, "turns": [{"text": "a", "seed": 3},
                                                            {"text": "b", "guidance_scale": 6}]},
                          "test")
    first, second = (script.turn_options(t) for t in script.turns)
    assert (first.seed, first.guidance_scale) == (3, 2.5)  # the script's value fills in
    assert (second.seed, second.guidance_scale) == (None, 6.0)  # the turn's own wins
    assert set(RENDER_OPTIONS) <= set(type(script).model_fields)


def test_script_options_reach_the_detokenizer(runtime, detokenizer_calls, tmp_path):
    script = tmp_path / "options.yaml"
    script.write_text(
        "model: tiny\n"
        "guidance_scale: 2.5\n"
        "turns:\n"
        "  - {text: draw a barn, force_image: true, max_new_tokens: 70,\n"
        "     guidance_scale: 5, num_inference_steps: 3, seed: 11}\n"
        "  - {text: and another, force_image: true, max_new_tokens: 70}\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(script), "--out", str(out)]) == 0
    assert len(detokenizer_calls) == 2
    first, second = detokenizer_calls
    assert (first["guidance_scale"], first["num_inference_steps"], first["seed"]) == (5.0, 3, 11)
    defaults = runtime.render_defaults
    assert (second["guidance_scale"], second["num_inference_steps"], second["seed"]) == (
        2.5, defaults.num_inference_steps, defaults.seed)

    turns = json.loads((out / "transcript.json").read_text())["turns"]
    made = [next(p for p in t["parts"] if p["type"] == "image")["provenance"] for t in turns]
    assert [(m["guidance_scale"], m["num_inference_steps"], m["seed"]) for m in made] == [
        (5.0, 3, 11), (2.5, defaults.num_inference_steps, defaults.seed)]
    assert turns[0]["request"]["guidance_scale"] == 5.0 and turns[0]["request"]["seed"] == 11


def test_chat_set_applies_to_later_turns(runtime, detokenizer_calls, tmp_path, monkeypatch,
                                         capsys):
    lines = ["/set", "/set guidance_scale 5", "/set guidance_scale lots", "/set nosuch 1",
             "/set num_inference_steps 2", "/set seed 7", "/unset seed", "/set", "/draw",
             "draw a barn", "/unset guidance_scale", "/draw", "draw it again", "/quit"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    store = tmp_path / "store"
    assert cli.main(["chat", "--model", "tiny", "--store", str(store), "--max-new-tokens", "68"]) == 0
    out, err = capsys.readouterr()

    defaults = runtime.render_defaults
    first, second = detokenizer_calls
    assert (first["guidance_scale"], first["num_inference_steps"], first["seed"]) == (
        5.0, 2, defaults.seed)  # the bad value and the unknown name changed nothing
    assert (second["guidance_scale"], second["num_inference_steps"]) == (
        defaults.guidance_scale, 2)  # /unset gave the model's default back

    assert "/set guidance_scale: Input should be a valid number" in err and "nothing changed" in err
    assert "no turn option 'nosuch'" in err
    listings = [block for block in out.split("you> /set\n")[1:]]
    assert len(listings) == 2
    assert f"guidance_scale        {defaults.guidance_scale}" in listings[0]
    assert "the model's default" in listings[0]
    after = listings[1].split("you> ")[0]
    assert "guidance_scale        5.0           set" in after
    assert f"seed                  {defaults.seed}            the model's default" in after
    assert "max_new_tokens        68            set" in after

    with SessionStore(store) as opened:
        (session,) = opened.list_sessions()
        turns = opened.turns(session.id)
    made = [next(p for p in t.parts if p.type == "image").provenance for t in turns]
    assert [(m.guidance_scale, m.num_inference_steps, m.seed) for m in made] == [
        (5.0, 2, defaults.seed), (defaults.guidance_scale, 2, defaults.seed)]
