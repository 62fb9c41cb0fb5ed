"""Untrusted content (issue 10, deliverable 5): pickles, names that could become paths, symlinks.

Three guarantees, each through the code that handles the content for real:

* **No unsafe unpickling.** Every ``torch.load`` in the code base passes ``weights_only=True``;
  a syntax-tree scan proves it (and a self-test proves the scan catches each way of spelling
  the call).
* **Names never make a path outside the places the agent owns.** Phrases the model writes,
  session ids, skill and variant names, titles and the artifact paths a skill reports come from
  a model, a user or a plugin; ``../``, absolute paths, NUL bytes and very long names either
  become safe file names inside the artifact or store directory, or are refused with a typed
  error that says what is wrong, and the session and store are intact afterwards.
* **Symlinks inside model folders are followed and logged** (a Hugging Face cache is made of
  them); a dangling one is a `CheckpointError` naming the link.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import BaseModel, ValidationError

from seedx_agent import ActionResult, Skill, hookimpl
from seedx_agent.artifacts import reported_artifacts
from seedx_agent.plugins import pm
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import SkillContext, SkillRegistrationError, SkillReply, SkillRequest
from seedx_agent.store import SessionNotFound, SessionStore, StoreError
from seedx_agent.types import BoxPart, TextPart
from seedx_agent.variants import AdapterWeights, Variant, VariantRegistry

ROOT = Path(__file__).resolve().parents[1]
SCENE = ROOT / "examples" / "nano" / "scene.png"
NANO_WEIGHTS = ROOT / "plugins" / "seedx_nano" / "weights"
SCANNED = ("core_models", "seedx_agent", "plugins", "scripts", "benchmarks", "examples", "tests")

HOSTILE_NAMES = ["../../../../tmp/seedx-escape", "/etc/passwd", "..", ".", "a\x00b",
                 "x" * 5000, "..\\..\\windows", "~root/.ssh/authorized_keys"]
FUZZ = settings(deadline=None, max_examples=40, database=None,
                derandomize=os.environ.get("CI", "").lower() == "true",
                suppress_health_check=[HealthCheck.too_slow])
# names as a model or a user might write them: separators, dots, NULs, any unicode, any length
hostile_text = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(["..", "/", "\\", ".", "\x00", "~", "a", "é", " ", "\n", "etc"]),
             max_size=60).map("".join),
    st.integers(200, 3000).map(lambda n: "a" * n))


# --- (a) torch.load only with weights_only=True ---------------------------------------------------

UNSAFE_LOADERS = {"torch.load", "torch.serialization.load"}


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every use of ``torch.load`` that is not a call with a literal
    ``weights_only=True``: a plain call, ``weights_only=False`` or a variable, an alias
    (``import torch as t``, ``from torch import load``, ``from torch.serialization import
    load``), ``getattr(torch, "load")``, or the function passed on (``loader = torch.load``,
    ``partial(torch.load, ...)``), since whoever calls it then is not checked."""
    tree = ast.parse(source, filename)
    names: dict[str, str] = {}  # local name -> the torch object it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    # ``import torch.serialization`` binds ``torch``; ``... as s`` binds the module
                    names[alias.asname or "torch"] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "torch" or node.module.startswith("torch.")):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(expr: ast.AST) -> str | None:
        if isinstance(expr, ast.Name):
            return names.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        if (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name)
                and expr.func.id == "getattr" and len(expr.args) >= 2
                and isinstance(expr.args[1], ast.Constant) and isinstance(expr.args[1].value, str)):
            base = dotted(expr.args[0])
            return f"{base}.{expr.args[1].value}" if base else None
        return None

    safe: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and dotted(node.func) in UNSAFE_LOADERS and any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords):
            safe.add(id(node.func))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute, ast.Call)) and id(node) not in safe \
                and dotted(node) in UNSAFE_LOADERS:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node)} is used without "
                         "weights_only=True (it would unpickle arbitrary objects)")
    return sorted(set(found))


# each unsafe spelling, and the line the scan must name
BAD_LOADS = {
    "plain": ("import torch\ntorch.load(path)\n", 2),
    "weights_only=False": ("import torch\ntorch.load(path, weights_only=False)\n", 2),
    "weights_only from a variable": ("import torch\ntorch.load(path, weights_only=trusted)\n", 2),
    "module alias": ("import torch as t\nt.load(path, map_location='cpu')\n", 2),
    "from torch import load": ("from torch import load\nload(path)\n", 2),
    "from torch import load as": ("from torch import load as read\n\nread(path)\n", 3),
    "torch.serialization.load": ("import torch\ntorch.serialization.load(path)\n", 2),
    "import torch.serialization": ("import torch.serialization\ntorch.serialization.load(path)\n", 2),
    "serialization alias": ("import torch.serialization as ser\nser.load(path)\n", 2),
    "from torch import serialization": ("from torch import serialization\nserialization.load(path)\n", 2),
    "from torch.serialization import load": ("from torch.serialization import load\nload(path)\n", 2),
    "inside a function": ("def read(path):\n    import torch as T\n    return T.load(path)\n", 3),
    "getattr": ("import torch\ngetattr(torch, 'load')(path)\n", 2),
    "passed on": ("import torch\nloader = torch.load\nloader(path)\n", 2),
    "partial": ("import functools, torch\nfunctools.partial(torch.load, weights_only=False)(path)\n", 2),
}
GOOD_LOADS = {
    "weights_only=True": "import torch\ntorch.load(path, map_location='cpu', weights_only=True, mmap=True)\n",
    "alias with weights_only=True": "from torch import load\nload(path, weights_only=True)\n",
    "other loads": "import json, numpy as np\njson.load(f)\nnp.load(path)\n",
    "a string and a comment": "text = 'torch.load(path)'  # torch.load(path)\n",
    "another module's load": "import mylib as torch_like\ntorch_like.load(path)\n",
}


@pytest.mark.parametrize("form", sorted(BAD_LOADS))
def test_the_scan_catches_every_unsafe_spelling(form):
    source, line = BAD_LOADS[form]
    found = unsafe_torch_loads(source, "bad.py")
    assert found, f"the scan missed: {source!r}"
    assert [f.split(": ")[0] for f in found] == [f"bad.py:{line}"], found
    assert "without weights_only=True" in found[0]


@pytest.mark.parametrize("form", sorted(GOOD_LOADS))
def test_the_scan_passes_safe_code(form):
    assert unsafe_torch_loads(GOOD_LOADS[form]) == []


def test_no_torch_load_without_weights_only_anywhere():
    files = sorted(p for top in SCANNED for p in (ROOT / top).rglob("*.py"))
    assert len(files) > 100  # the scan really reads the code base
    found = [f for p in files for f in unsafe_torch_loads(p.read_text(encoding="utf-8"),
                                                          str(p.relative_to(ROOT)))]
    assert not found, "\n".join(found)


# --- (b) names that could become paths ------------------------------------------------------------

def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


class Named(BaseModel):
    text: str = ""


def pluggy_manager():
    """A plugin manager with no plugins: a skill host that holds only what a test registers."""
    import pluggy

    from seedx_agent import hookspecs

    manager = pluggy.PluginManager("seedx")
    manager.add_hookspecs(hookspecs)
    return manager


def skill_named(name: str) -> Skill:
    return type("Hostile", (Skill,), {"name": name, "description": "d",
                                      "action_types": {"note": Named}})()


class ReportsSkill(Skill):
    """Writes one file in its folder and reports it, along with paths that lead elsewhere."""

    name = "reports"
    description = "reports files inside and outside its artifact directory"
    action_types = {"note": Named}

    def to_actions(self, reply):
        return [self.make_action("note", Named(text="x"))]

    def run(self, action, context):
        out = Path(context.artifact_dir)
        (out / "note.txt").write_text("mine")
        (out / "link.txt").symlink_to("/etc/hostname")
        return ActionResult(message="wrote", artifacts=(
            out / "note.txt", Path("note.txt"), out / ".." / ".." / "elsewhere.txt",
            Path("/etc/hostname"), out / "link.txt", Path("../../../../etc/passwd"),
            out / "never-written.txt"))


@pytest.fixture(scope="module")
def runtime(one_thread):
    """The tiny runtime replaying recorded replies, with the test skill above, and a preset that
    hands it to the CLI (so ``seedx chat`` loads no second model)."""
    import seedx_agent
    from seedx_agent import Preset
    from seedx_agent.testing import replay_runtime, stop_replay

    class Plugin:
        @hookimpl
        def register_skills(self, register):
            register(ReportsSkill())

        @hookimpl
        def register_presets(self, register):
            register(Preset(name="untrusted_replay", build=lambda **kw: rt,
                            description="test_untrusted's replay runtime"))

    plugin = Plugin()
    pm.register(plugin, name="test-untrusted")
    rt = replay_runtime(runtime=seedx_agent.from_pretrained("tiny"))
    rt.skill_host  # built now, while the test skill is registered
    yield rt
    pm.unregister(plugin)
    stop_replay(rt)


@pytest.fixture
def store(tmp_path):
    with SessionStore(tmp_path / "store") as opened:
        yield opened


@pytest.mark.parametrize("phrase", ["../../../../tmp/seedx-escape", "/etc/passwd",
                                    "a\x00b/../c", "é" * 600, "..", "~/.bashrc"])
def test_phrases_the_model_writes_name_crops_inside_the_artifact_dir(runtime, store, tmp_path,
                                                                      phrase):
    from seedx_agent.testing import Reply

    runtime.replay.push(Reply().text(phrase).box(100, 90, 60, 50).eos())
    session = runtime.open_session(store=store)
    before = files_under(tmp_path)
    done = session.ask("Where is it?", [SCENE], skill="grounding", max_new_tokens=1500)
    assert done.errors == () and done.finish_reason == "eos"
    box = next(p for p in done.parts if isinstance(p, BoxPart))
    assert box.phrase is None or box.phrase.strip() in phrase  # punctuation alone names nothing
    turn_dir = (session.artifact_dir / "turn-000" / "grounding").resolve()
    assert all(Path(a).parent == turn_dir for a in done.artifacts), done.artifacts
    (crop,) = [Path(a).name for a in done.artifacts if Path(a).name.startswith("crop_")]
    assert len(crop) <= 52 and crop.isascii() and "/" not in crop and ".." not in crop
    # nothing was written but the turn's files, the store's database and its pictures
    made = files_under(tmp_path) - before
    def expected(p: Path) -> bool:
        return (p.is_relative_to(session.artifact_dir) or p.is_relative_to(store.images_dir)
                or (session.artifact_dir.is_relative_to(p) and p.is_relative_to(store.root))
                or (p.parent == store.root and p.name.startswith(store.db_path.name)))

    assert all(expected(p) for p in made), sorted(made)
    assert [t.status for t in store.turns(session.id)] == ["done"]


@FUZZ
@given(phrase=st.one_of(st.none(), hostile_text))
def test_any_phrase_crops_to_a_file_inside_the_skill_dir(phrase):
    from seedx_grounding import GroundingSkill, Locate

    image = Image.new("RGB", (64, 48), "white")
    image_id = "ab" * 32
    skill = GroundingSkill()
    action = skill.make_action("locate", Locate(
        index=3, phrase=phrase, bins=(100, 100, 80, 80), image_id=image_id,
        image_size=(64, 48), pixel_xyxy=(10.0, 8.0, 40.0, 30.0)))
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "turn" / "grounding"
        out.mkdir(parents=True)
        result = skill.run(action, SkillContext(artifact_dir=out, get_image=lambda i: image))
        written = files_under(Path(scratch))
    assert {Path(a) for a in result.artifacts} <= written
    assert all(p.parent == out for p in written if p.is_file()), written
    crop = next(Path(a).name for a in result.artifacts if Path(a).name.startswith("crop_"))
    assert crop.startswith("crop_03_") and crop.endswith(".png") and len(crop) <= 52
    assert all(c.isalnum() or c in "_-." for c in crop) and crop.isascii()


@FUZZ
@given(title=hostile_text)
def test_any_slide_title_leaves_the_deck_files_inside_the_skill_dir(title):
    """A slide's title (the model's words) goes into the deck and its preview, never into a
    file name: the files are the skill's own fixed names."""
    from seedx_slides import DECK_NAME, JSON_NAME, SlidesSkill, preview_name

    skill = SlidesSkill()
    reply = SkillReply(request=SkillRequest(text="Make a slide about squares.", skill="slides"),
                       parts=(TextPart(text=f"Title: {title}\n- a point\nLayout: title"),))
    (action,) = skill.to_actions(reply)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "slides"
        out.mkdir()
        result = skill.run(action, SkillContext(artifact_dir=out, get_image=lambda i: None))
        written = {p.relative_to(scratch).as_posix() for p in files_under(Path(scratch))}
    assert {Path(a).name for a in result.artifacts} == {DECK_NAME, JSON_NAME, preview_name(1)}
    assert written == {"slides", *(f"slides/{n}" for n in (DECK_NAME, JSON_NAME, preview_name(1)))}


@FUZZ
@given(title=hostile_text)
def test_any_session_title_stays_data_in_the_store_and_its_export(title):
    title = title.replace("\x00", "")  # SQLite text; a NUL title is refused below
    with tempfile.TemporaryDirectory() as scratch:
        with SessionStore(Path(scratch) / "store") as opened:
            record = opened.create_session(title=title)
            assert opened.get_session(record.id).title == title
            opened.export(record.id, Path(scratch) / "export")
        written = {p.relative_to(scratch).as_posix() for p in files_under(Path(scratch))}
    assert {w for w in written if w.startswith("export")} == {
        "export", "export/images", "export/transcript.json"}
    assert all(w.startswith(("store", "export")) for w in written), written


def test_a_story_title_is_escaped_in_the_storybook():
    from seedx_story.book import storybook_html

    page = storybook_html(Image.new("RGB", (8, 8)), [], title="</title><script>x</script>../..")
    assert "<script>" not in page and "&lt;/title&gt;&lt;script&gt;" in page


@pytest.mark.parametrize("session_id", HOSTILE_NAMES)
def test_a_hostile_session_id_is_not_found_and_the_store_is_intact(runtime, store, tmp_path,
                                                                    session_id):
    from seedx_agent.testing import Reply

    runtime.replay.push(Reply().text("Fine.").eos())
    session = runtime.open_session(store=store, title="kept")
    assert session.ask("Hello").errors == ()
    before = files_under(tmp_path)
    with pytest.raises(SessionNotFound, match="no session"):
        store.get_session(session_id)
    with pytest.raises(SessionNotFound, match="no session"):
        runtime.open_session(store=store, session_id=session_id)
    assert files_under(tmp_path) == before
    assert [s.id for s in store.list_sessions()] == [session.id]
    assert [t.status for t in store.turns(session.id)] == ["done"]
    resumed = runtime.open_session(store=store, session_id=session.id)
    assert len(resumed.history) == 1 and resumed.artifact_dir == session.artifact_dir


def test_a_stored_row_with_a_hostile_id_is_refused_not_used(runtime, store):
    """A store file edited by hand: the row's id is data from disk, validated like input."""
    good = store.create_session(title="good")
    evil = good.model_dump(mode="json") | {"id": "../../../tmp/seedx-escape"}
    with sqlite3.connect(store.db_path) as db:
        db.execute("INSERT INTO sessions VALUES (?, ?, ?)",
                   (evil["id"], evil["created_at"], json.dumps(evil)))
    db.close()
    with pytest.raises(StoreError, match="does not validate as SessionRecord"):
        runtime.open_session(store=store, session_id=evil["id"])
    assert store.get_session(good.id) == good
    assert not (store.root / "artifacts").exists()


@pytest.mark.parametrize("image_id", HOSTILE_NAMES[:5])
def test_a_hostile_image_id_never_names_a_file(store, image_id):
    with pytest.raises(StoreError, match="not an image id"):
        store.image_path(image_id)
    with pytest.raises(StoreError, match="not an image id"):
        store.get_image(image_id)


@pytest.mark.parametrize("command", ["show", "export", "chat"])
@pytest.mark.parametrize("session_id", ["../../../tmp/seedx-escape", "/etc/passwd", "a\x00b",
                                        "f" * 5000])
def test_the_cli_refuses_a_hostile_session_id(runtime, store, tmp_path, capsys, command,
                                              session_id):
    from seedx_agent import cli

    store.create_session(title="kept")
    dest = tmp_path / "export"
    argv = {"show": ["sessions", "show", session_id],
            "export": ["sessions", "export", session_id, str(dest)],
            "chat": ["chat", "--model", "untrusted_replay", "--session", session_id]}[command]
    before = files_under(tmp_path)
    assert cli.main(argv + ["--store", str(store.root)]) == 2
    err = capsys.readouterr().err
    assert "seedx: error: no session" in err and "Traceback" not in err
    assert not dest.exists() and files_under(tmp_path) == before
    assert [s.title for s in store.list_sessions()] == ["kept"]


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/b", "..", ".", "a\x00b", "", "Bad Name"])
def test_a_skill_name_that_could_be_a_path_is_refused_at_registration(name):
    host = SkillHost(pluggy_manager())
    with pytest.raises(SkillRegistrationError, match=r"name must match .*got " + re.escape(repr(name))):
        host.register(skill_named(name))
    assert name not in host.skills


@pytest.mark.parametrize("name", ["a" * 300, "note\n"])
def test_a_skill_name_too_long_for_a_folder_or_with_a_newline_is_refused(name):
    host = SkillHost(pluggy_manager())
    with pytest.raises(SkillRegistrationError, match="name must match"):
        host.register(skill_named(name))


@pytest.mark.parametrize("name", HOSTILE_NAMES + ["a" * 65, ".hidden", "ok/../.."])
def test_a_variant_name_that_could_be_a_path_is_refused(name):
    registry = VariantRegistry()
    with pytest.raises(ValidationError, match="a variant name is a folder name under the model root"):
        registry.register({"name": name})
    with pytest.raises(ValidationError, match="a variant name is a folder name"):
        AdapterWeights(base=name, path="adapters/x")
    assert name not in registry


@pytest.mark.parametrize("path", ["../other_model/llm", "/etc", "llm/../../x", "a\x00b", "",
                                  "..\\..\\x", "C:\\models\\llm"])
def test_a_variant_loads_only_from_inside_the_model_root(path):
    with pytest.raises(ValidationError, match="relative to the model root"):
        Variant(name="mine", llm=path)
    with pytest.raises(ValidationError, match="relative to the model root"):
        Variant(name="mine", agent=path)
    with pytest.raises(ValidationError, match="relative to the model root"):
        AdapterWeights(base="seed_x_i", path=path)


def test_names_that_are_still_fine():
    assert Variant(name="seed_x_i").llm_path == "seed_x_i/llm"
    assert Variant(name="v1.5-lora_b", llm="loras/v1.5").llm_path == "loras/v1.5"
    assert AdapterWeights(base="seed_x_i", path="adapters/tryon").path == "adapters/tryon"


def test_a_model_folder_cannot_point_a_variant_outside_itself(tmp_path):
    """``nano_manifest.json`` is data in a downloaded folder: its per-adapter settings are
    validated like a plugin's registration."""
    from seedx_agent.adapters import adapter_variant

    (tmp_path / "nano_manifest.json").write_text(json.dumps(
        {"variants": {"tryon": {"agent": "../../../etc/passwd"}}}))
    with pytest.raises(ValidationError, match="relative to the model root.*etc/passwd"):
        adapter_variant(tmp_path, "tryon", "seed_x_i", ("1x1",))


@pytest.mark.parametrize("variant", ["../../x", "/etc", "a\x00b", "v" * 5000])
def test_a_hostile_variant_in_a_turn_fails_that_turn_only(runtime, store, variant):
    session = runtime.open_session(store=store)
    done = session.ask("Hello", variant=variant)
    assert [e.source for e in done.errors] == ["variant"]
    assert "unknown variant" in done.errors[0].message
    assert [t.status for t in store.turns(session.id)] == ["failed"]
    assert not session.artifact_dir.exists()


def test_reported_artifacts_keep_only_files_under_the_dir(tmp_path):
    out = tmp_path / "turn" / "skill"
    out.mkdir(parents=True)
    (out / "a.png").write_bytes(b"x")
    (tmp_path / "outside.txt").write_text("x")
    (out / "out.txt").symlink_to(tmp_path / "outside.txt")
    kept, refused = reported_artifacts(
        [out / "a.png", "a.png", out / ".." / ".." / "outside.txt", tmp_path / "outside.txt",
         out / "out.txt", "../../outside.txt", "a\x00b", out / "missing.png"], out)
    assert kept == (str((out / "a.png").resolve()),)
    assert refused == (str(out / ".." / ".." / "outside.txt"), str(tmp_path / "outside.txt"),
                       str(out / "out.txt"), "../../outside.txt", "a\x00b")


def test_a_skill_reporting_files_outside_its_dir_gets_an_error_and_they_are_left_out(
        runtime, store):
    from seedx_agent.testing import Reply

    runtime.replay.push(Reply().text("Done.").eos())
    session = runtime.open_session(store=store)
    done = session.ask("Write a note.", skill="reports")
    mine = (session.artifact_dir / "turn-000" / "reports").resolve()
    assert done.artifacts == (str(mine / "note.txt"),)
    (error,) = done.errors
    assert error.source == "skill:reports" and "outside its artifact directory" in error.message
    assert "/etc/hostname" in error.message and "elsewhere.txt" in error.message
    assert store.turns(session.id)[0].artifacts == (str(mine / "note.txt"),)


# --- (c) symlinks in model folders ----------------------------------------------------------------

def hf_cache_of(folder: Path, cache: Path, files: list[str]) -> Path:
    """``folder``'s ``files`` laid out as a Hugging Face cache does: each file a blob named by
    its hash, and ``snapshots/<rev>/<file>`` a relative symlink to it."""
    import hashlib

    blobs, snapshot = cache / "blobs", cache / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    for name in files:
        data = (folder / name).read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


NANO_AGENT_FILES = ["seed_x_i/llm/config.json", "seed_x_i/llm/model.safetensors",
                    "seed_x_i/agent/model.safetensors"]


def load_nano_agent(root: Path):
    import torch

    from core_models.checkpoint import SeedXPaths
    from core_models.config import SeedXConfig
    from core_models.stack import load_agent

    cfg = SeedXConfig.load(NANO_WEIGHTS / "seedx_config.json")
    paths = SeedXPaths.resolve(root, "seed_x_i")
    return load_agent(paths.llm, paths.agent, input_resampler=cfg.input_resampler,
                      output_resampler=cfg.output_resampler, agent=cfg.agent,
                      dtype=torch.float32)


def test_a_model_folder_of_symlinks_loads_and_each_link_is_logged(tmp_path, caplog):
    import torch

    snapshot = hf_cache_of(NANO_WEIGHTS, tmp_path / "models--nano", NANO_AGENT_FILES)
    with caplog.at_level(logging.INFO, logger="core_models.checkpoint.reading"):
        linked = load_nano_agent(snapshot)
    direct = load_nano_agent(NANO_WEIGHTS)
    for (name, a), (_, b) in zip(linked.state_dict().items(), direct.state_dict().items()):
        assert torch.equal(a, b), name
    followed = [r.getMessage() for r in caplog.records if "symlink" in r.getMessage()]
    for name in NANO_AGENT_FILES:
        link, target = snapshot / name, (snapshot / name).resolve()
        assert target.parent.name == "blobs"
        lines = [m for m in followed if f"{link} -> {target}" in m]
        assert len(lines) == 1, (name, followed)  # once per link, however often it is read


@pytest.mark.parametrize("dangling", NANO_AGENT_FILES)
def test_a_dangling_symlink_in_a_model_folder_names_the_link(tmp_path, dangling):
    from core_models.checkpoint import CheckpointError

    snapshot = hf_cache_of(NANO_WEIGHTS, tmp_path / "models--nano", NANO_AGENT_FILES)
    link = snapshot / dangling
    link.resolve().unlink()  # a pruned blob
    with pytest.raises(CheckpointError, match=f"{re.escape(str(link))}: dangling symlink to "
                                              f"{re.escape(os.readlink(link))}"):
        load_nano_agent(snapshot)


def test_a_symlink_loop_in_a_model_folder_is_a_checkpoint_error(tmp_path):
    from core_models.checkpoint import CheckpointError, load_state_dict_file

    loop = tmp_path / "model.safetensors"
    loop.symlink_to(tmp_path / "other.safetensors")
    (tmp_path / "other.safetensors").symlink_to(loop)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(loop))}: "):
        load_state_dict_file(loop)
