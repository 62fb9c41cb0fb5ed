"""The ``seedx`` CLI: cheap start-up, the README demo, bad scripts, plugins, sessions, the REPL.

The tiny runtime takes seconds to build, so the model-backed tests share one in-process run of
the demo (``main`` keeps the runtime it loaded) and the REPL gets one subprocess. The command list
is read from the click group itself (`walk`), so a new command cannot go undocumented.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import click
import pytest
import yaml
from PIL import Image

from core_models.image_io import content_hash
from seedx_agent import cli
from seedx_agent.cli.run import SMOKE_SCRIPT
from seedx_agent.cli.script import Script, ScriptTurn, load_script
from seedx_agent.cli.synthetic import synthetic_image
from seedx_agent.cli.transcript import TRANSCRIPT_SCHEMA_VERSION

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "examples" / "demo.yaml"
SMOKE = ROOT / "examples" / "smoke.yaml"
BUILT_IN = ("chat", "run", "smoke", "plugins", "sessions", "convert", "eval")


def walk(group: click.Group, prefix: tuple[str, ...] = ()):
    """Every command under ``group``, depth first: (path of names, command)."""
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


def built_in(command: click.Command) -> bool:
    """Defined by seedx_agent itself (plugins document their own commands)."""
    return (command.callback is not None
            and command.callback.__module__.startswith("seedx_agent."))


def run_python(code: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kwargs)


def test_help_plugins_and_sessions_do_not_import_torch(tmp_path):
    code = f"""
import sys
import seedx_agent
assert 'torch' not in sys.modules, 'import seedx_agent imported torch'
from seedx_agent import cli
for argv in (['--help'], ['run', '--help'], ['chat', '--help']):
    try:
        cli.main(argv)
    except SystemExit as exit:
        assert exit.code == 0, (argv, exit.code)
assert cli.main(['plugins']) == 0
assert cli.main(['sessions', 'list', '--store', {str(tmp_path / 'none')!r}]) == 0
assert 'torch' not in sys.modules, 'the CLI imported torch'
print('NO TORCH')
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "NO TORCH" in result.stdout
    assert "Usage: seedx" in result.stdout
    assert "UNTRAINED" in result.stdout  # --help says plainly that the default model is untrained
    top = {path[0] for path, _ in walk(cli.cli)}
    assert top >= set(BUILT_IN)
    for command in top:
        assert f"  {command} " in result.stdout, f"seedx --help does not list {command}"


def test_the_command_tree():
    tree = {" ".join(path): command for path, command in walk(cli.cli)}
    assert {"sessions list", "sessions show", "sessions export"} <= set(tree)
    # eval is the core's empty group; model plugins (the Nano) add their evaluations to it
    assert isinstance(tree["eval"], click.Group) and built_in(tree["eval"])
    assert all(not built_in(c) for path, c in tree.items() if path.startswith("eval "))
    assert cli.main([]) == 2  # no command: the help, as a usage error


def test_plugins_add_commands_through_the_hook(capsys):
    from seedx_agent import hookimpl
    from seedx_agent.plugins import pm

    @click.command("hello")
    def hello():
        """Say hello."""
        click.echo("hello from a plugin")

    class Greeter:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            raise RuntimeError("no commands today")

    pm.register(Greeter(), name="test-cli-greeter")
    try:
        cli.add_plugin_commands()
        assert cli.main(["hello"]) == 0
        assert "hello from a plugin" in capsys.readouterr().out
        pm.register(Broken(), name="test-cli-broken")
        cli.add_plugin_commands()  # reported, and the CLI goes on working
        assert "a plugin failed to add its commands" in capsys.readouterr().err
        assert cli.main(["plugins"]) == 0
    finally:
        for name in ("test-cli-greeter", "test-cli-broken"):
            if pm.has_plugin(name):
                pm.unregister(name=name)
        cli.cli.commands.pop("hello", None)


def test_every_example_is_a_valid_script():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert DEMO in examples and len(examples) > 1
    for path in examples:
        load_script(path)  # raises CliError, naming the file and the field


def test_smoke_yaml_is_the_built_in_smoke_script():
    assert yaml.safe_load(SMOKE.read_text()) == SMOKE_SCRIPT


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``seedx run examples/smoke.yaml --out DIR`` (tiny), once for the module: (DIR, transcript)."""
    out = tmp_path_factory.mktemp("demo") / "out"
    assert cli.main(["run", str(SMOKE), "--out", str(out)]) == 0
    return out, json.loads((out / "transcript.json").read_text())


def test_demo_run_writes_transcript_and_images(demo, capsys):
    out, transcript = demo
    assert transcript["schema_version"] == TRANSCRIPT_SCHEMA_VERSION
    assert transcript["runtime"]["untrained"] is True and "UNTRAINED" in transcript["notice"]
    assert transcript["complete"] is True
    turns = transcript["turns"]
    assert len(turns) == 4
    assert [t["errors"] for t in turns] == [[], [], [], []]
    assert [t["index"] for t in turns] == [0, 1, 2, 3]

    roles = [[p["role"] for p in t["parts"] if p["type"] == "image"] for t in turns]
    assert roles == [["input"], ["generated"], ["edited"], []]
    # every image the transcript names is a PNG under images/ whose pixels hash to its id
    for turn in turns:
        for image in turn["images"]:
            assert image["file"] == f"images/{image['image_id']}.png"
            with Image.open(out / image["file"]) as picture:
                assert content_hash(picture) == image["image_id"]
    # the edit was made from the generated picture, and the grounding turn looked at the edit
    generated = turns[1]["images"][0]["image_id"]
    edited = next(p for p in turns[2]["parts"] if p["type"] == "image")
    assert edited["provenance"]["parents"] == [generated]
    assert edited["provenance"]["detokenizer_stage"] == 2
    assert turns[2]["variant"] == "seed_x_edit"
    assert turns[3]["model_images"] == [edited["image_id"]]
    assert (out / "store" / "sessions.sqlite3").exists()
    # the page for people: every turn's request, and every picture by its file
    page = (out / "index.html").read_text()
    for turn in turns:
        assert html.escape(turn["request"]["text"], quote=True) in page
        for image in turn["images"]:
            assert f"src='{image['file']}'" in page


def test_bad_scripts_are_refused_before_loading_the_model(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    missing.write_text("turns:\n  - text: hi\n    images: [nowhere.png]\n")
    assert cli.main(["run", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "turns[0].images[0]: image file not found" in err and "nowhere.png" in err
    assert not (tmp_path / "out").exists()

    typo = tmp_path / "typo.yaml"
    typo.write_text("turns:\n  - text: hi\n  - {text: again, guidance: 5}\n")
    assert cli.main(["run", str(typo), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "turns[1]: unknown key 'guidance'" in err and "guidance_scale" in err  # what it takes

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: many\nturns:\n  - {text: hi, guidance_scale: -1}\n")
    assert cli.main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "turns[0].guidance_scale: Input should be greater than or equal to 0" in err
    assert "seed: Input should be a valid integer" in err
    assert not (tmp_path / "out").exists()

    assert cli.main(["run", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "script not found" in capsys.readouterr().err


def test_an_unknown_model_or_placement_is_a_usage_error(tmp_path, capsys):
    assert cli.main(["smoke", "--out", str(tmp_path / "a"), "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "seedx: error:" in err and "no-such-model" in err and "Traceback" not in err
    assert cli.main(["smoke", "--out", str(tmp_path / "b"), "--placement", "moon"]) == 2
    assert "seedx: error: --placement:" in capsys.readouterr().err


def test_corrupt_image_is_recorded_and_the_run_goes_on(demo, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    script = tmp_path / "script.yaml"
    script.write_text("turns:\n"
                      "  - {text: 'what is this?', images: [corrupt.png], max_new_tokens: 4}\n"
                      "  - {text: hello, max_new_tokens: 4}\n")
    out = tmp_path / "out"
    assert cli.main(["run", str(script), "--out", str(out)]) == 0  # loaded once, by `demo`
    first, second = json.loads((out / "transcript.json").read_text())["turns"]
    assert first["finish_reason"] == "error"
    assert first["errors"][0]["source"] == "input"
    assert "image 1" in first["errors"][0]["message"]
    assert second["errors"] == [] and second["finish_reason"] == "max_new_tokens"
    # a failed turn is stored (marked failed) when the session records failures, else not at all
    assert second["index"] == (0 if first["index"] is None else first["index"] + 1)


@pytest.mark.skipif("grounding" not in {ep.name for ep in metadata.entry_points(group="seedx")},
                    reason="the seedx-agent entry points are not installed")
def test_plugins_lists_grounding(capsys):
    assert cli.main(["plugins"]) == 0
    text = capsys.readouterr().out
    assert "grounding" in text and "register_skills" in text and "locate" in text
    assert cli.main(["plugins", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "grounding" in [p["name"] for p in listed["plugins"]]
    assert "grounding" in [s["name"] for s in listed["skills"]]


def test_sessions_list_show_export(demo, tmp_path, capsys):
    out, transcript = demo
    store = str(out / "store")
    session_id = transcript["session"]["id"]
    assert cli.main(["sessions", "list", "--store", store]) == 0
    assert session_id in capsys.readouterr().out

    assert cli.main(["sessions", "show", session_id[:8], "--store", store]) == 0
    shown = capsys.readouterr().out
    assert "turn 3" in shown and "edit of" in shown and "Make the sky purple." in shown
    assert cli.main(["sessions", "show", session_id, "--json", "--store", store]) == 0
    assert len(json.loads(capsys.readouterr().out)["turns"]) == 4

    dest = tmp_path / "export"
    assert cli.main(["sessions", "export", session_id, str(dest), "--store", store]) == 0
    exported = json.loads((dest / "transcript.json").read_text())
    assert len(exported["turns"]) == 4
    assert {p.stem for p in (dest / "images").glob("*.png")} == {
        p.stem for p in (out / "images").glob("*.png")}

    assert cli.main(["sessions", "show", "ffff", "--store", store]) == 2
    assert "no session 'ffff'" in capsys.readouterr().err
    assert cli.main(["sessions", "show", "", "--store", store]) == 2  # "" prefixes every id
    assert "give a session id" in capsys.readouterr().err


def test_chat_refuses_an_unknown_session_before_loading_the_model(tmp_path, capsys, monkeypatch):
    from seedx_agent.cli import chat

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the session id was checked")

    monkeypatch.setattr(chat, "load_runtime", no_model)
    for bad, words in (("ffff", "no session 'ffff'"), ("", "give a session id")):
        code = cli.main(["chat", "--store", str(tmp_path / "store"), "--session", bad])
        assert code == 2
        assert words in capsys.readouterr().err
    assert cli.main(["sessions", "list", "--store", str(tmp_path / "empty")]) == 0
    assert "no sessions" in capsys.readouterr().out


def test_chat_repl_through_stdin(tmp_path, capsys):
    picture = tmp_path / "photo.png"
    synthetic_image(64, 48).save(picture)
    lines = ["/help", f"/image {picture}", f"/image {tmp_path / 'nope.png'}", "/draw",
             "what is this? draw it", "/skill nosuch", "/frobnicate", "/quit", "never read"]
    result = subprocess.run(
        [sys.executable, "-m", "seedx_agent.cli", "chat", "--model", "tiny", "--store",
         str(tmp_path / "store"), "--max-new-tokens", "68"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=180)
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, err
    assert "UNTRAINED" in out and "/image PATH" in out
    assert f"attached {picture} (64x48)" in out
    assert "image file not found" in err  # the bad path is reported, and the REPL goes on
    assert "next turn draws an image: on" in out
    assert "[image 0: generated" in out and str(tmp_path / "store" / "images") in out
    assert "[turn 0: max_new_tokens]" in out
    assert "no skill named 'nosuch'" in err and "unknown command /frobnicate" in err
    assert "never read" not in out

    assert cli.main(["sessions", "list", "--store", str(tmp_path / "store")]) == 0
    assert "  1 turn " in capsys.readouterr().out



def test_chat_versions_revert_and_version_images(tmp_path):
    picture = tmp_path / "photo.png"
    synthetic_image(64, 48).save(picture)
    lines = ["/versions", f"/image {picture}", "/draw", "draw it", "/versions", "/revert 9",
             "/revert x", "/revert 1", "/image version:7", "/image version:2", "/quit"]
    result = subprocess.run(
        [sys.executable, "-m", "seedx_agent.cli", "chat", "--model", "tiny", "--store",
         str(tmp_path / "store"), "--max-new-tokens", "68"],
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=180)
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, err
    assert "no images yet" in out
    # the photo given is version 1, the picture drawn from it version 2, the working one
    (given,) = [line for line in out.splitlines() if line.startswith("    1  given")]
    (made,) = [line for line in out.splitlines() if line.startswith("*   2  from 1")]
    assert "64x48" in given and "generated" in made
    assert "there is no version 9: this session has versions 1..2" in err
    assert "usage: /revert N" in err
    assert "version 1 is the working image again" in out
    assert "not attached: there is no version 7" in err
    assert "attached version 2 (" in out


def test_docs_cover_commands_script_and_transcript(demo):
    docs = (ROOT / "docs" / "cli.md").read_text()
    for path, command in walk(cli.cli):
        name = " ".join(path)
        if len(path) == 1:
            assert f"\n## seedx {name}\n" in docs, f"docs/cli.md needs '## seedx {name}'"
        else:
            assert f"seedx {name}" in docs, f"docs/cli.md does not mention seedx {name}"
        if not built_in(command):
            continue  # a plugin's command: its options are its plugin's to document
        for param in command.params:
            for opt in getattr(param, "opts", ()):
                if opt.startswith("--") and opt != "--help":
                    assert f"{opt}" in docs, f"docs/cli.md: seedx {name} {opt} undocumented"
    for model in (Script, ScriptTurn):
        for field in model.model_fields:
            assert f"| `{field}` |" in docs, f"docs/cli.md: script key {field!r} undocumented"
    _out, transcript = demo
    for key in [*transcript, *transcript["turns"][0]]:
        assert f"`{key}`" in docs, f"docs/cli.md: transcript key {key!r} undocumented"
