"""The plugin docs cannot drift from the code: every hook is documented with its arguments, and
the tutorial's plugin and its test are run as written."""

import re
import sys
import types
from pathlib import Path

import pytest

from seedx_agent import hookspecs
from seedx_agent.plugins import pm
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import SkillContext, SkillReply, SkillRequest
from seedx_agent.types import BoxPart, ImagePart, TextPart

DOCS = Path(__file__).parent.parent / "docs"
PLUGINS_MD = (DOCS / "plugins.md").read_text()
TUTORIAL_MD = (DOCS / "tutorial_skill.md").read_text()

def undocumented_hooks(manager, docs: str) -> list[str]:
    """Every hook on ``manager`` (built-in or added by a plugin) without a ``### name(args)``
    heading in ``docs``, as the heading it needs."""
    missing = []
    for name in sorted(vars(manager.hook)):
        caller = getattr(manager.hook, name)
        if caller.spec is None:  # an implementation nobody declared: not a hook to document
            continue
        heading = f"### {name}({', '.join(caller.spec.argnames)})"
        if f"\n{heading}\n" not in docs:
            missing.append(heading)
    return missing


def test_hookspecs_found():
    assert set(vars(pm.hook)) >= {"register_presets", "register_skills", "register_variants",
                                  "register_commands", "turn_done"}


def test_every_hook_on_the_manager_is_documented_with_its_arguments():
    assert undocumented_hooks(pm, PLUGINS_MD) == []


def test_a_hook_a_plugin_defines_must_be_documented_too():
    import pluggy

    manager = pluggy.PluginManager("seedx")
    manager.add_hookspecs(hookspecs)

    class TheirSpecs:
        @hookspecs.hookspec
        def register_palettes(self, register):
            """A plugin's own hook."""

    manager.add_hookspecs(TheirSpecs)
    assert undocumented_hooks(manager, PLUGINS_MD) == ["### register_palettes(register)"]
    assert undocumented_hooks(manager, PLUGINS_MD + "\n### register_palettes(register)\n") == []


@pytest.mark.parametrize("attribute", ["name", "description", "consumes", "preferred_variant",
                                       "variant_role", "image_roles", "deadline_s",
                                       "action_types", "check_request", "build_prompt",
                                       "to_actions", "run", "make_action", "parse_payload",
                                       "SkillRequestError"])
def test_skill_api_is_documented(attribute):
    assert f"`{attribute}" in PLUGINS_MD


def test_every_variant_field_is_documented():
    from seedx_agent import Variant

    for field in Variant.model_fields:
        assert f"| `{field}` |" in PLUGINS_MD, f"docs/plugins.md: Variant.{field} undocumented"


def python_blocks(markdown):
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.S | re.M)


@pytest.fixture
def counter(monkeypatch):
    """The tutorial's plugin module, importable as ``seedx_counter`` and registered on ``pm``."""
    plugin_code, _test_code = python_blocks(TUTORIAL_MD)
    module = types.ModuleType("seedx_counter")
    exec(compile(plugin_code, "docs/tutorial_skill.md", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, "seedx_counter", module)
    pm.register(module, name="tutorial-counter")
    yield module
    pm.unregister(name="tutorial-counter")


def test_tutorial_skill_runs_through_the_host(counter, tmp_path):
    host = SkillHost(pm)
    photo = ImagePart(image_id="f" * 64, width=300, height=200)
    reply = SkillReply(request=SkillRequest(text="cats?", images=(photo,)), parts=(
        TextPart(text="Cats:"), BoxPart(bins=(10, 10, 5, 5), phrase="cat"),
        BoxPart(bins=(20, 20, 5, 5), phrase="cat"), BoxPart(bins=(30, 30, 5, 5))))
    assert "counter" in [skill.name for skill in host.select(reply)]
    context = SkillContext(artifact_dir=tmp_path, get_image=lambda image_id: None)
    events = list(host.dispatch(reply, context, default_skill="counter"))
    assert [e.type for e in events] == ["action_event"]
    assert events[0].action.payload == {"counts": {"cat": 2, "object": 1}}
    assert (tmp_path / "counter" / "counts.json").exists()


def test_tutorial_test_block_passes(counter, tmp_path):
    _plugin_code, test_code = python_blocks(TUTORIAL_MD)
    namespace = {}
    exec(compile(test_code, "docs/tutorial_skill.md", "exec"), namespace)
    tests = [fn for name, fn in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test(tmp_path)
