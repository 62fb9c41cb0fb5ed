"""Plugin loading: entry points, SEEDX_LOAD_PLUGINS, SEEDX_TRACE_PLUGINS, third-party packages.

The environment variables are read when ``seedx_agent.plugins`` is imported, so those tests run
a fresh interpreter.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

from seedx_agent.plugins import get_plugins

LIST_PLUGINS = "import json; from seedx_agent.plugins import get_plugins; " \
               "print(json.dumps(get_plugins()))"


BUILT_IN = ("designer", "grounding", "slides", "story", "tryon")  # the five skills


def run_python(code, cwd, env=None, pythonpath=None):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEEDX_")}
    clean.pop("PYTHONPATH", None)
    if pythonpath:
        clean["PYTHONPATH"] = str(pythonpath)
    clean.update(env or {})
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=clean, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def names(stdout):
    return [p["name"] for p in json.loads(stdout)]


def test_builtin_grounding_comes_through_the_entry_point():
    (grounding,) = [p for p in get_plugins() if p["name"] == "grounding"]
    assert grounding == {"name": "grounding", "package": "seedx-agent", "version": "0.1.0",
                         "hooks": ["register_skills"]}


def test_load_plugins_subset_and_none(tmp_path):
    assert "grounding" in names(run_python(LIST_PLUGINS, tmp_path).stdout)
    subset = run_python(LIST_PLUGINS, tmp_path, {"SEEDX_LOAD_PLUGINS": "grounding, missing"})
    assert names(subset.stdout) == ["grounding"]
    assert "plugin 'missing' is not installed" in subset.stderr
    assert names(run_python(LIST_PLUGINS, tmp_path, {"SEEDX_LOAD_PLUGINS": ""}).stdout) == []


def test_trace_plugins_prints_hook_calls(tmp_path):
    code = "from seedx_agent.skill_host import SkillHost; SkillHost()"
    quiet = run_python(code, tmp_path)
    assert "register_skills" not in quiet.stderr
    traced = run_python(code, tmp_path, {"SEEDX_TRACE_PLUGINS": "1"})
    assert "register_skills({'register':" in traced.stderr
    (implementers,) = re.findall(r"register_skills\(.*\) -> \[(.*)\]", traced.stderr)
    assert set(BUILT_IN) <= set(implementers.split(", "))
    # what the hook registered
    assert f"SkillHost skills={sorted(BUILT_IN)}" in traced.stderr


THIRD_PARTY = '''
"""A skill shipped as its own distribution, as someone else would write it."""
from typing import ClassVar
from pydantic import BaseModel
from seedx_agent.skills import ActionResult, Skill, hookimpl

class Echo(BaseModel):
    version: ClassVar[int] = 2
    text: str

class EchoSkill(Skill):
    name = "echo"
    description = "Writes the reply's text to echo.txt."
    consumes = frozenset({"text"})
    action_types = {"echo": Echo}

    def to_actions(self, reply):
        return [self.make_action("echo", Echo(text=" ".join(p.text for p in reply.parts)))]

    def run(self, action, context):
        path = context.artifact_dir / "echo.txt"
        path.write_text(self.parse_payload(action).text)
        return ActionResult(message="echoed", artifacts=(path,))

@hookimpl
def register_skills(register):
    register(EchoSkill())
'''

USE_THIRD_PARTY = '''
import json, sys
from pathlib import Path
from seedx_agent.plugins import get_plugins
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import SkillContext, SkillReply, SkillRequest
from seedx_agent.types import TextPart

host = SkillHost()
reply = SkillReply(request=SkillRequest(text="hi"), parts=(TextPart(text="hello there"),))
context = SkillContext(artifact_dir=Path(sys.argv[1]), get_image=lambda image_id: None)
events = [e.model_dump(mode="json") for e in host.dispatch(reply, context)]
print(json.dumps({"plugins": get_plugins(), "skills": list(host.skills), "events": events}))
'''


def test_third_party_distribution_is_loaded_and_used(tmp_path):
    site = tmp_path / "site"
    (site / "thirdparty_skill").mkdir(parents=True)
    (site / "thirdparty_skill" / "__init__.py").write_text(THIRD_PARTY)
    dist_info = site / "thirdparty_skill-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-skill\n"
                                        "Version: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[seedx]\nthirdparty = thirdparty_skill\n")
    (dist_info / "RECORD").write_text("thirdparty_skill/__init__.py,,\n"
                                      "thirdparty_skill-0.1.dist-info/METADATA,,\n"
                                      "thirdparty_skill-0.1.dist-info/entry_points.txt,,\n"
                                      "thirdparty_skill-0.1.dist-info/RECORD,,\n")
    artifacts = tmp_path / "artifacts"
    code = USE_THIRD_PARTY.replace("sys.argv[1]", repr(str(artifacts)))

    out = json.loads(run_python(textwrap.dedent(code), tmp_path, pythonpath=site).stdout)
    assert {"name": "thirdparty", "package": "thirdparty-skill", "version": "0.1",
            "hooks": ["register_skills"]} in out["plugins"]
    assert sorted(out["skills"]) == sorted(["echo", *BUILT_IN])
    assert out["events"] == [{
        "type": "action_event", "schema_version": 2, "summary": "echoed",
        "artifacts": [str((artifacts / "echo" / "echo.txt").resolve())],
        "action": {"type": "action", "schema_version": 2, "skill": "echo", "action": "echo",
                   "version": 2, "payload": {"text": "hello there"}}}]
    assert (artifacts / "echo" / "echo.txt").read_text() == "hello there"

    # and it can be left out like any plugin
    only = run_python(LIST_PLUGINS, tmp_path, {"SEEDX_LOAD_PLUGINS": "thirdparty"},
                      pythonpath=site)
    assert names(only.stdout) == ["thirdparty"]


def test_plugins_and_skills_do_not_import_torch(tmp_path):
    code = ("import sys, seedx_agent, seedx_agent.plugins, seedx_agent.skill_host, seedx_grounding, "
            "seedx_tryon; "
            "seedx_agent.skill_host.SkillHost(); assert 'torch' not in sys.modules, 'torch imported'")
    run_python(code, tmp_path)


def test_a_plugin_that_fails_to_import_is_reported_and_the_others_still_load(tmp_path):
    site = tmp_path / "site"
    (site / "broken_skill").mkdir(parents=True)
    (site / "broken_skill" / "__init__.py").write_text("import no_such_module_here\n")
    dist_info = site / "broken_skill-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-skill\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[seedx]\nbroken = broken_skill\n")
    code = ("import json; from seedx_agent.plugins import BROKEN, get_plugins; "
            "print(json.dumps({'loaded': [p['name'] for p in get_plugins()], 'broken': BROKEN}))")
    done = run_python(code, tmp_path, pythonpath=site)
    out = json.loads(done.stdout)
    assert "grounding" in out["loaded"] and "broken" not in out["loaded"]
    assert "no_such_module_here" in out["broken"]["broken"]
    assert "plugin 'broken' failed to load and is skipped" in done.stderr
    assert "SEEDX_LOAD_PLUGINS" in done.stderr


def test_seedx_plugins_lists_the_five_skills_from_the_entry_point(tmp_path):
    code = "from seedx_agent.cli import main; main(['plugins', '--json'])"
    out = json.loads(run_python(code, tmp_path).stdout)
    skills = {s["name"]: s for s in out["skills"]}
    assert set(BUILT_IN) <= set(skills)
    for name in BUILT_IN:  # each from its own package, loaded as the seedx entry point
        assert skills[name]["class"].startswith(f"seedx_{name}.")
        (plugin,) = [p for p in out["plugins"] if p["name"] == name]
        assert plugin["package"] == "seedx-agent" and plugin["hooks"] == ["register_skills"]
    assert skills["slides"]["variant_role"] == "slides"
    assert skills["story"]["variant_role"] == "story"
    assert skills["designer"]["variant_role"] is None
    assert out["broken"] == {}
