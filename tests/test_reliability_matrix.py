"""The bad-input matrix (issue 10, deliverable 1): one test per kind of bad input, each through the
product path a user hits, each asserting a typed error whose message says what is wrong (or the
documented recovery), and then that nothing broke: the session answers a next turn, its store
reopens and every turn committed before is still there, unchanged (`assert_goes_on`).

| group | kinds |
| --- | --- |
| images (`session.ask` on a replay runtime with a store) | missing file, empty file, not an image, truncated, decompression bomb, absurd aspect ratio; recovered: 1 pixel, CMYK, palette with transparency, 16-bit grey, alpha, EXIF-rotated, animated GIF (first frame) |
| model output (replayed replies) | unclosed `<box_start>`, unclosed `<img>`, out-of-range `<loc-…>`, non-numeric `<loc-…>`, zero-area box, image run cut short, only special tokens, `max_new_tokens` mid-tag |
| checkpoints (`seedx_agent.from_pretrained(folder)`) | missing file, missing and unexpected keys, wrong shapes, truncated safetensors, pickle `weights_only` refuses, config contradicting the weights |
| plugins (temporary plugins on `seedx_agent.plugins.pm`) | raises on import, raises on registration, raises in `to_actions`, raises in `run`, hangs past its deadline (late result discarded), returns garbage, two register one name, `turn_done` hook raises |
| store and files | truncated SQLite file, SQLite locked by another connection, a turn whose image file is gone, a drawn picture whose file is gone; disk full while saving a picture and while committing a turn (both real: `RLIMIT_FSIZE`); a picture write refused (`ENOSPC` / `EROFS` / `EACCES`), a drawn picture refused (`ENOSPC`), a database write refused |
| interrupted work | Nano training checkpoint cut off mid-write, `seedx convert` interrupted or out of disk |
| scripts and API calls (`parse_script` / `load_script`, `seedx run`, `session.ask`) | unknown keys, wrong types, unknown skill, unknown variant, unknown preset, an empty turn |

The HTTP server of a later issue adds its cases here. Everything runs on the untrained tiny stack
with recorded replies (`seedx_agent.testing`), so the file takes seconds; the disk-full cases
lower this process's file-size limit for one write and restore it at once.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import resource
import shutil
import signal
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file

import seedx_agent
from core_models import checkpoint as ckpt
from core_models.checkpoint import CheckpointError, CheckpointMismatchError, writing
from helpers import synthetic_image
from seedx_agent import cli, plugins
from seedx_agent.cli import model as cli_model
from seedx_agent.cli.errors import CliError
from seedx_agent.cli.script import load_script, parse_script
from seedx_agent.hookspecs import hookimpl
from seedx_agent.placement import Placement
from seedx_agent.plugins import pm
from seedx_agent.skill_host import SkillHost
from seedx_agent.skills import ActionResult, Skill, SkillRegistrationError
from seedx_agent.store import SessionStore, StoreError
from seedx_agent.testing import Reply, replay_runtime, stop_replay
from seedx_agent.turn_options import TurnOptions
from seedx_agent.types import BoxPart, ErrorEvent, ImagePart, Notice, TextPart
from test_checkpoint import Payload, save_sharded_bin
from test_image_io import encode, png_header_only

PLACEHOLDERS = [f"<img_{i:05d}>" for i in range(64)]


# --- the conversation every case starts from, and what "intact afterwards" means -------------------

@pytest.fixture
def chat(rt, tmp_path):
    """A stored session with two committed turns (a picture and a question, then a greeting) on
    the module's runtime, replaying recorded replies; tests push the replies they need."""
    replay_runtime([Reply().text("A red square.").eos(), Reply().text("Hello.").eos()], runtime=rt)
    store = SessionStore(tmp_path / "store", busy_timeout=0.2)
    session = rt.open_session(store=store)
    assert session.ask("What is this?", [Image.new("RGB", (48, 32), (200, 30, 30))]).ok
    assert session.ask("Hi.").ok
    yield session
    store.close()
    stop_replay(rt)


def committed(session) -> list[str]:
    """The session's stored turns, exactly as stored."""
    return [t.model_dump_json() for t in session.store.turns(session.id)]


def text_of(done) -> str:
    return "".join(p.text for p in done.parts if isinstance(p, TextPart))


def assert_goes_on(session, before: list[str]) -> None:
    """The session answers a next turn; its store reopens and holds every turn committed before,
    unchanged, then every later turn of the session (none left unsaved) up to this one."""
    session.runtime.replay.push(Reply().text("Still here.").eos())
    done = session.ask("Are you still there?")
    assert done.ok and text_of(done) == "Still here.", done
    with SessionStore(session.store.root) as reopened:
        stored = reopened.turns(session.id)
    assert [t.model_dump_json() for t in stored[:len(before)]] == before
    assert [t.index for t in stored] == list(range(len(session.history)))
    assert stored[-1].index == done.turn_index and stored[-1].status == "done"


def assert_refused(session, done, source: str, *words: str) -> ErrorEvent:
    """The turn failed with one error from ``source`` saying ``words``, and is stored failed."""
    (error,) = done.errors
    assert done.finish_reason == "error" and error.source == source, done
    for word in words:
        assert word in error.message, (word, error.message)
    stored = session.store.turns(session.id)[-1]
    assert stored.index == done.turn_index and stored.status == "failed"
    assert stored.errors == (error,) and stored.context is None
    return error


def stored_picture(session, done) -> Image.Image:
    """The (only) input picture of a turn, read back from the store."""
    (part,) = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "input"]
    picture = session.store.get_image(part.image_id)
    assert (part.width, part.height) == picture.size
    return picture


# --- images ---------------------------------------------------------------------------------------

def test_image_missing_file_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    done = chat.ask("Look.", [tmp_path / "nowhere.png"])
    assert_refused(chat, done, "input", "image 1: image file not found", "nowhere.png")
    assert_goes_on(chat, before)


def test_image_empty_file_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    (tmp_path / "empty.png").write_bytes(b"")
    done = chat.ask("Look.", [tmp_path / "empty.png"])
    assert_refused(chat, done, "input", "image 1:", "empty.png", "is empty (0 bytes)")
    assert_goes_on(chat, before)


def test_image_that_is_not_an_image_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    (tmp_path / "notes.png").write_text("a shopping list, not a picture")
    done = chat.ask("Look.", [tmp_path / "notes.png"])
    assert_refused(chat, done, "input", "notes.png", "is not a recognised image", "PNG, JPEG")
    assert_goes_on(chat, before)


def test_image_truncated_png_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    data = encode(synthetic_image(120, 90), "PNG")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    done = chat.ask("Look.", [tmp_path / "cut.png"])
    assert_refused(chat, done, "input", "cut.png", "truncated")
    assert_goes_on(chat, before)


def test_image_decompression_bomb_is_refused_from_its_header_and_the_session_goes_on(chat):
    before = committed(chat)
    done = chat.ask("Look.", [png_header_only(9000, 8000)])  # 72 Mpx declared, 16 px of data
    assert_refused(chat, done, "input", "9000x8000 = 72,000,000 pixels", "max_pixels")
    assert_goes_on(chat, before)


def test_image_absurd_aspect_ratio_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    Image.new("RGB", (3000, 20), (0, 90, 200)).save(tmp_path / "strip.png")
    done = chat.ask("Look.", [tmp_path / "strip.png"])
    assert_refused(chat, done, "input", "3000x20", "aspect ratio of 150.0:1", "limit of 50:1")
    assert_goes_on(chat, before)


def test_image_of_one_pixel_is_read_and_answered(chat):
    before = committed(chat)
    chat.runtime.replay.push(Reply().text("A dot.").eos())
    done = chat.ask("What is this?", [encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG")])
    assert done.ok and text_of(done) == "A dot."
    assert stored_picture(chat, done).getpixel((0, 0)) == (9, 99, 199)
    assert_goes_on(chat, before)


def exif_rotated() -> tuple[bytes, np.ndarray]:
    """A landscape JPEG tagged "rotate 90 degrees clockwise to view", and the upright pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(synthetic_image(40, 20), "JPEG", exif=exif.tobytes(), quality=95)
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    return data, np.asarray(stored.transpose(Image.Transpose.ROTATE_270))


def palette_with_transparency() -> bytes:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 255, 10, 200, 10] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0
    return encode(palette, "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 8), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    return buffer.getvalue()



@pytest.mark.parametrize("kind", ["cmyk", "palette", "sixteen_bit", "alpha", "exif_rotated",
                                  "animated_gif"])
def test_image_in_an_odd_mode_is_read_as_the_rgb_a_viewer_shows(chat, kind):
    """Recoveries (core_models.image_io): each is read as the 8-bit RGB picture a viewer shows,
    stored as such, and the turn is answered."""
    if kind == "cmyk":
        source = encode(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG", quality=100)

        def check(rgb):
            r, g, b = rgb[1, 1]
            assert r > 240 and g < 15 and b < 15  # red ink reads red
    elif kind == "palette":
        source = palette_with_transparency()

        def check(rgb):  # the transparent entry on white, the other as it is
            assert rgb.tolist() == [[[255, 255, 255], [10, 200, 10]]]
    elif kind == "sixteen_bit":
        source = encode(Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16)), "PNG")

        def check(rgb):  # scaled to 8 bits, not clipped to white
            assert rgb[0, :, 0].tolist() == [0, 100, 255]
    elif kind == "alpha":
        rgba = Image.new("RGBA", (3, 1), (255, 0, 0, 0))
        rgba.putpixel((1, 0), (255, 0, 0, 255))
        rgba.putpixel((2, 0), (0, 0, 0, 128))
        source = encode(rgba, "PNG")

        def check(rgb):  # composited onto white
            assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[0, 1].tolist() == [255, 0, 0]
            assert abs(int(rgb[0, 2, 0]) - 127) <= 1
    elif kind == "exif_rotated":
        source, upright = exif_rotated()

        def check(rgb):  # turned upright, as every photo viewer shows it
            assert rgb.shape == (40, 20, 3) and np.array_equal(rgb, upright)
    else:
        source = animated_gif()

        def check(rgb):  # the first frame (image_io's documented rule), not the second
            assert rgb.shape == (8, 16, 3) and rgb[3, 3].tolist() == [250, 0, 0]
    before = committed(chat)
    chat.runtime.replay.push(Reply().text("Seen.").eos())
    done = chat.ask("What is this?", [source])
    assert done.ok and text_of(done) == "Seen."
    picture = stored_picture(chat, done)
    assert picture.mode == "RGB"
    check(np.asarray(picture))
    assert_goes_on(chat, before)


# --- model output ---------------------------------------------------------------------------------

def reply_turn(session, reply: Reply, *args, **kwargs):
    """``reply`` replayed as the model's answer to one turn: (events, TurnDone)."""
    session.runtime.replay.push(reply)
    events = list(session.turn(*args, **kwargs))
    return events, events[-1]


def notices(events) -> list[str]:
    return [e.message for e in events if isinstance(e, Notice)]


def assert_well_formed(session, done, finish_reason: str = "eos") -> None:
    """A malformed reply still ends a completed turn whose parts round-trip as stored."""
    assert done.ok and done.finish_reason == finish_reason, done
    stored = session.store.turns(session.id)[-1]
    assert stored.status == "done" and stored.parts == done.parts
    assert all(0 <= b < 224 for p in done.parts if isinstance(p, BoxPart) for b in p.bins)


def test_reply_with_an_unclosed_box_gives_text_and_a_warning(chat):
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("The cat is at").tokens(
        "<box_start>", "<loc-10>", "<loc-20>").eos(), "Where is the cat?")
    assert_well_formed(chat, done)
    assert [p.type for p in done.parts] == ["text"] and text_of(done) == "The cat is at"
    assert any("not closed at </s>" in n and "[10, 20]" in n for n in notices(events))
    assert_goes_on(chat, before)


def test_reply_with_an_unclosed_image_run_says_no_image_was_produced(chat):
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("Here:").tokens("<img>", *PLACEHOLDERS).eos(),
                              "Draw.")
    assert_well_formed(chat, done)
    assert not [p for p in done.parts if isinstance(p, ImagePart)]
    broken = done.parts[-1]
    assert isinstance(broken, TextPart) and broken.text == ""
    assert any("cut off at </s> after 64 of 64" in w for w in broken.warnings)
    assert "an image was started but not produced" in broken.warnings
    assert_goes_on(chat, before)


def test_reply_with_an_out_of_range_location_drops_the_box_with_a_warning(chat):
    """``<loc-300>`` is no token (the bins stop at 223): it arrives as text and breaks the box."""
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("The cat is at").tokens(
        "<box_start>", "<loc-300>", "<loc-1>", "<loc-2>", "<loc-3>", "<box_end>").eos(),
        "Where is the cat?")
    assert_well_formed(chat, done)
    assert not [p for p in done.parts if isinstance(p, BoxPart)]
    warnings = notices(events) + [w for p in done.parts for w in p.warnings]
    assert any("dropped box at" in w and "interrupted by text" in w for w in warnings), warnings
    assert any("<loc-…> token(s) outside a box" in w for w in warnings), warnings
    assert_goes_on(chat, before)


def test_reply_with_a_non_numeric_location_drops_the_box_with_a_warning(chat):
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("It is at").tokens(
        "<box_start>", "<loc-abc>", "<loc-x1>", "<box_end>").text(".").eos(), "Where?")
    assert_well_formed(chat, done)
    assert not [p for p in done.parts if isinstance(p, BoxPart)]
    warnings = notices(events) + [w for p in done.parts for w in p.warnings]
    assert any("dropped box at" in w and "interrupted by text" in w for w in warnings), warnings
    assert_goes_on(chat, before)


def test_reply_with_a_zero_area_box_is_kept_with_a_warning_and_not_cropped(chat):
    """A box of width 0 is placed (it is where the model pointed) but the grounding skill keeps
    it without a crop or COCO annotation, and says why."""
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("The line is at").box(100, 100, 0, 10)
                              .text(".").eos(), "Where is the line?",
                              [Image.new("RGB", (64, 48), (240, 240, 240))], skill="grounding")
    assert_well_formed(chat, done)
    (box,) = [p for p in done.parts if isinstance(p, BoxPart)]
    x0, y0, x1, y1 = box.pixel_xyxy
    assert box.bins == (100, 100, 0, 10) and x0 == x1 and y1 > y0
    (action,) = done.actions
    assert any("has no area on its 64x48 image; not cropped" in w
               for w in action.payload["warnings"])
    assert not [a for a in done.artifacts if "crop_" in a]
    assert_goes_on(chat, before)


def test_reply_with_an_image_run_cut_short_says_it_cannot_be_drawn(chat):
    before = committed(chat)
    events, done = reply_turn(chat, Reply().text("Here:").tokens(
        "<img>", *PLACEHOLDERS[:10], "</img>").text("Done.").eos(), "Draw.")
    assert_well_formed(chat, done)
    assert not [p for p in done.parts if isinstance(p, ImagePart)]
    slot = next(p for p in done.parts if "an image was started but not produced" in p.warnings)
    assert any("has 10 placeholder tokens, expected 64" in w for w in slot.warnings)
    assert text_of(done) == "Here: Done."
    assert_goes_on(chat, before)


def test_reply_of_only_special_tokens_gives_no_parts_and_says_what_was_ignored(chat):
    before = committed(chat)
    events, done = reply_turn(chat, Reply().tokens(
        "<s>", "<patch>", "</patch>", "</img>", "<box_end>", "<loc-5>", "<img_00003>").eos(),
        "Say something.")
    assert_well_formed(chat, done)
    assert done.parts == ()
    said = " | ".join(notices(events))
    for what in ("<s> (BOS)", "<patch>/</patch>", "</img> without <img>", "<box_end> without",
                 "<loc-…> token(s) outside a box", "image placeholder token(s) outside"):
        assert what in said, (what, said)
    assert_goes_on(chat, before)


def test_reply_cut_by_max_new_tokens_inside_a_box_ends_with_a_warning(chat):
    before = committed(chat)
    words = len(chat.runtime.tokenizer.encode("The cat is at"))
    events, done = reply_turn(chat, Reply().text("The cat is at").box(10, 20, 30, 40).text(".")
                              .eos(), "Where is the cat?", max_new_tokens=words + 3)
    assert_well_formed(chat, done, "max_new_tokens")
    assert [p.type for p in done.parts] == ["text"]
    assert any("not closed when the reply ended (max_new_tokens)" in n and "[10, 20]" in n
               for n in notices(events))
    assert_goes_on(chat, before)


# --- checkpoints ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def release(rt, tmp_path_factory) -> Path:
    """The tiny stack saved in the release layout (no de-tokenizer: not needed to fail early)."""
    return rt.stack.save_pretrained(tmp_path_factory.mktemp("release") / "tiny", stages=())


@pytest.fixture
def tree(release, tmp_path) -> Path:
    """A copy of the release that a test may break."""
    return Path(shutil.copytree(release, tmp_path / "tiny"))


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextmanager
def refused_unchanged(root: Path):
    """The load below must fail, and must not have written or changed a file of ``root``."""
    before = fingerprint(root)
    yield
    assert fingerprint(root) == before


def load(root: Path):
    return seedx_agent.from_pretrained(root, dtype=torch.float32, progress=False)


def test_checkpoint_missing_file_names_every_place_looked(tree):
    (tree / "seed_x_i" / "agent" / "model.safetensors").unlink()
    with refused_unchanged(tree), pytest.raises(CheckpointError) as err:
        load(tree)
    message = str(err.value)
    assert "agent" in message and "seed_x_i/agent" in message and "seed-x-17b-i" in message


def test_checkpoint_missing_and_unexpected_keys_are_listed_together(tree):
    path = tree / "seed_x_i" / "agent" / "model.safetensors"
    state = load_file(str(path))
    gone = sorted(state)[0]
    del state[gone]
    state["input_resampler.stray_extra"] = torch.zeros(2)
    save_file(state, str(path))
    with refused_unchanged(tree), pytest.raises(CheckpointMismatchError) as err:
        load(tree)
    assert err.value.missing == [gone] and err.value.unexpected == ["input_resampler.stray_extra"]
    message = str(err.value)
    assert f"missing keys (1):\n    {gone}" in message
    assert "unexpected keys (1):\n    input_resampler.stray_extra" in message


def test_checkpoint_wrong_shape_lists_the_key_and_both_shapes(tree):
    path = tree / "QwenViT" / "qwen_vit_G.safetensors"
    state = load_file(str(path))
    key = "ln_post.weight"
    shape = list(state[key].shape)
    state[key] = torch.zeros(shape[0] + 3)
    save_file(state, str(path))
    with refused_unchanged(tree), pytest.raises(CheckpointMismatchError) as err:
        load(tree)
    assert f"{key}: checkpoint [{shape[0] + 3}] vs model {shape}" in str(err.value)
    assert [m[0] for m in err.value.mismatched] == [key]


def test_checkpoint_truncated_safetensors_names_the_file(tree):
    path = tree / "seed_x_i" / "llm" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with refused_unchanged(tree), pytest.raises(CheckpointError) as err:
        load(tree)
    assert str(path) in str(err.value) and "truncated or corrupt" in str(err.value)


def test_checkpoint_pickle_that_weights_only_refuses_is_never_unpickled(tree):
    agent = tree / "seed_x_i" / "agent"
    state = load_file(str(agent / "model.safetensors"))
    (agent / "model.safetensors").unlink()
    marker = tree.parent / "code_ran"
    torch.save({**state, "extra": Payload(str(marker))}, agent / "pytorch_model.bin")
    with refused_unchanged(tree), pytest.raises(CheckpointError) as err:
        load(tree)
    message = str(err.value)
    assert "pytorch_model.bin" in message and "weights_only=True) refuses" in message
    assert "not loaded unsafely" in message and not marker.exists()


def test_checkpoint_config_that_contradicts_the_weights_is_refused_by_key(tree):
    config = json.loads((tree / "seedx_config.json").read_text())
    config["vit"]["layers"] += 1  # the file says 3 blocks, the weights hold 2
    (tree / "seedx_config.json").write_text(json.dumps(config))
    with refused_unchanged(tree), pytest.raises(CheckpointMismatchError) as err:
        load(tree)
    assert err.value.missing and all(k.startswith("transformer.resblocks.2.")
                                     for k in err.value.missing)
    assert "missing keys" in str(err.value) and "qwen_vit_G.safetensors" in str(err.value)


# --- plugins --------------------------------------------------------------------------------------

class Note(BaseModel):
    version: ClassVar[int] = 1
    text: str


class NoteSkill(Skill):
    """Notes the reply's last text in a file; the misbehaving skills below break one step."""

    name = "matrix_note"
    consumes = frozenset()  # runs only when a turn names it
    deadline_s = 5.0
    action_types = {"note": Note}

    def to_actions(self, reply):
        return [self.make_action("note", Note(text=reply.parts[-1].text))]

    def run(self, action, context):
        path = context.artifact_dir / "note.txt"
        path.write_text(self.parse_payload(action).text)
        return ActionResult(message="noted", artifacts=(path,))


@pytest.fixture
def install(rt, monkeypatch):
    """``install(plugin_object)``: registered on the real plugin manager for this test; the
    runtime builds its skill host afresh (as at start-up) while it is there and after."""
    names = []

    def add(plugin) -> None:
        names.append(f"matrix-plugin-{len(names)}")
        pm.register(plugin, name=names[-1])
        monkeypatch.setattr(rt, "_skill_host", None)

    yield add
    for name in names:
        if pm.has_plugin(name):
            pm.unregister(name=name)
    rt._skill_host = None  # monkeypatch restores the host it replaced after this


def registering(*skills):
    class Plugin:
        @hookimpl
        def register_skills(self, register):
            for skill in skills:
                register(skill)
    return Plugin()


def skill_turn(session, skill: str, text: str = "Note this."):
    session.runtime.replay.push(Reply().text(text).eos())
    return session.ask("Please note it.", skill=skill)


def test_plugin_raising_on_import_is_reported_and_the_others_still_load(
        chat, rt, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    (site / "matrix_broken_import").mkdir(parents=True)
    (site / "matrix_broken_import" / "__init__.py").write_text(
        "raise ImportError('needs libfoo.so, which is not installed')\n")
    dist = site / "matrix_broken_import-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: matrix-broken-import\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text("[seedx]\nmatrix_broken = matrix_broken_import\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "BROKEN", {})
    before = committed(chat)

    plugins.load_plugins("matrix_broken")
    err = capsys.readouterr().err
    assert "plugin 'matrix_broken' failed to load and is skipped: ImportError: needs libfoo.so" \
        in err and "SEEDX_LOAD_PLUGINS" in err
    assert plugins.BROKEN == {"matrix_broken": "ImportError: needs libfoo.so, which is not "
                                               "installed"}
    assert not pm.has_plugin("matrix_broken")
    monkeypatch.setattr(rt, "_skill_host", None)
    assert {"grounding", "tryon"} <= set(rt.skill_host.skills)  # the others are all there
    assert_goes_on(chat, before)


def test_plugin_raising_on_registration_is_named_and_the_session_goes_on(chat, install):
    class Broken:
        @hookimpl
        def register_skills(self, register):
            raise RuntimeError("cannot find my model files")

    before = committed(chat)
    install(Broken())
    with pytest.raises(SkillRegistrationError) as err:
        SkillHost(pm)
    assert "plugin 'matrix-plugin-0' failed while registering its skills: RuntimeError(" \
           "'cannot find my model files')" in str(err.value)
    assert "SEEDX_LOAD_PLUGINS" in str(err.value)

    # a turn that needs a skill fails, saying why; one that does not is answered, and says no
    # skill ran
    done = chat.ask("Where is it?", skill="grounding")
    assert_refused(chat, done, "skills", "plugin 'matrix-plugin-0' failed while registering")
    chat.runtime.replay.push(Reply().text("Answered anyway.").eos())
    done = chat.ask("Hello?")
    assert done.finish_reason == "eos" and text_of(done) == "Answered anyway."
    (error,) = done.errors
    assert error.source == "skills" and "no skill ran" in error.message
    assert "matrix-plugin-0" in error.message

    pm.unregister(name="matrix-plugin-0")  # removed: everything works again
    chat.runtime._skill_host = None
    assert_goes_on(chat, before)


def test_plugin_raising_in_to_actions_fails_alone_and_the_turn_completes(chat, install):
    class Raises(NoteSkill):
        def to_actions(self, reply):
            raise RuntimeError("to_actions exploded")

    before = committed(chat)
    install(registering(Raises()))
    done = skill_turn(chat, "matrix_note", "Fine text.")
    (error,) = done.errors
    assert error.source == "skill:matrix_note"
    assert "to_actions raised RuntimeError('to_actions exploded')" in error.message
    assert done.finish_reason == "eos" and text_of(done) == "Fine text." and done.actions == ()
    assert chat.store.turns(chat.id)[-1].errors == (error,)
    assert_goes_on(chat, before)


def test_plugin_raising_in_run_fails_alone_and_the_turn_completes(chat, install):
    class Raises(NoteSkill):
        def run(self, action, context):
            raise OSError("the printer is on fire")

    before = committed(chat)
    install(registering(Raises()))
    done = skill_turn(chat, "matrix_note")
    (error,) = done.errors
    assert error.source == "skill:matrix_note"
    assert "run('note') raised OSError('the printer is on fire')" in error.message
    assert done.finish_reason == "eos" and done.actions == () and done.artifacts == ()
    assert_goes_on(chat, before)


class Hangs(NoteSkill):
    """The first turn's ``run`` overruns its deadline and finishes during the second turn."""

    name = "matrix_hangs"
    deadline_s = 0.3

    def __init__(self):
        self.release = threading.Event()
        self.finished_late = threading.Event()

    def run(self, action, context):
        text = self.parse_payload(action).text
        if text == "first":
            self.release.wait(10)
            late = context.artifact_dir / "late.txt"
            late.write_text("LATE RESULT")
            self.finished_late.set()
            return ActionResult(message="LATE RESULT", artifacts=(late,))
        self.release.set()  # the first turn's work finishes now, while this turn runs
        assert self.finished_late.wait(10)
        path = context.artifact_dir / "second.txt"
        path.write_text(text)
        return ActionResult(message="second noted", artifacts=(path,))


def test_plugin_that_hangs_is_abandoned_and_its_late_result_shows_up_nowhere(
        chat, install, caplog):
    skill = Hangs()
    before = committed(chat)
    install(registering(skill))
    try:
        first = skill_turn(chat, "matrix_hangs", "first")
        (error,) = first.errors
        assert error.source == "skill:matrix_hangs"
        assert "did not finish within its deadline of 0.3 s and was abandoned" in error.message
        assert first.finish_reason == "eos" and first.actions == () and first.artifacts == ()

        with caplog.at_level(logging.WARNING, logger="seedx_agent.skills"):
            second = skill_turn(chat, "matrix_hangs", "second")
            for thread in threading.enumerate():  # the abandoned worker reports, then ends
                if thread.name == "seedx-skill-matrix_hangs":
                    thread.join(10)
    finally:
        skill.release.set()
    assert second.ok and [a.payload for a in second.actions] == [{"text": "second"}]
    assert len(second.artifacts) == 1 and second.artifacts[0].endswith("second.txt")
    assert "LATE" not in second.model_dump_json() and "late.txt" not in second.model_dump_json()
    stored = committed(chat)
    assert not [t for t in stored if "LATE" in t or "late.txt" in t]
    assert json.loads(stored[-2])["actions"] == [] and json.loads(stored[-1])["actions"] == \
        [a.model_dump(mode="json") for a in second.actions]
    (late,) = [r for r in caplog.records if r.name == "seedx_agent.skills.matrix_hangs"
               and "discarded" in r.getMessage()]
    assert "after its 0.3s deadline" in late.getMessage()
    assert "never attached to a later turn" in late.getMessage()
    assert "LATE RESULT" in late.getMessage()
    assert_goes_on(chat, before)


def test_plugin_returning_garbage_fails_alone_and_the_good_actions_run(chat, install):
    class Garbage(NoteSkill):
        def to_actions(self, reply):
            return ["not an action", self.make_action("note", Note(text="kept"))]

        def run(self, action, context):
            return {"message": "a dict is not an ActionResult"}

    before = committed(chat)
    install(registering(Garbage()))
    done = skill_turn(chat, "matrix_note")
    junk, result = done.errors
    assert junk.source == result.source == "skill:matrix_note"
    assert "to_actions returned a str, not an Action" in junk.message
    assert "run('note') returned dict, not an ActionResult" in result.message
    assert done.finish_reason == "eos" and done.actions == ()
    assert_goes_on(chat, before)


def test_two_plugins_registering_one_name_are_named_and_the_session_goes_on(chat, install):
    class Twin(NoteSkill):
        name = "matrix_twin"

    class OtherTwin(NoteSkill):
        name = "matrix_twin"

    before = committed(chat)
    install(registering(Twin()))
    install(registering(OtherTwin()))
    with pytest.raises(SkillRegistrationError) as err:
        SkillHost(pm)
    message = str(err.value)
    assert "skill name 'matrix_twin' is registered twice" in message
    assert "Twin" in message and "OtherTwin" in message and "SEEDX_LOAD_PLUGINS" in message
    done = chat.ask("Note it.", skill="matrix_twin")
    assert_refused(chat, done, "skills", "'matrix_twin' is registered twice")

    pm.unregister(name="matrix-plugin-1")
    chat.runtime._skill_host = None
    assert skill_turn(chat, "matrix_twin").ok  # one left: it runs
    assert_goes_on(chat, before)


def test_plugin_whose_turn_done_hook_raises_is_reported_and_the_turn_stays_saved(chat, install):
    class Listener:
        @hookimpl
        def turn_done(self, session, turn):
            raise ValueError("my dashboard is down")

    before = committed(chat)
    install(Listener())
    chat.runtime.replay.push(Reply().text("Saved anyway.").eos())
    done = chat.ask("Hello?")
    (error,) = done.errors
    assert error.source == "plugins" and "turn_done hook failed on turn 2" in error.message
    assert "my dashboard is down" in error.message and "the turn is saved" in error.message
    assert chat.store.turns(chat.id)[-1].index == done.turn_index
    pm.unregister(name="matrix-plugin-0")
    assert_goes_on(chat, before)


# --- store and files ------------------------------------------------------------------------------

def test_store_truncated_database_is_refused_by_name_and_left_as_it_is(chat, rt):
    before = committed(chat)
    root, session_id = chat.store.root, chat.id
    chat.store.close()  # the last connection folds the WAL into the file
    db = root / "sessions.sqlite3"
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(StoreError) as err:
        SessionStore(root)
    message = str(err.value)
    assert str(db) in message and "damaged (truncated or corrupt?)" in message
    assert "restore it from a backup" in message
    assert db.read_bytes() == whole[: len(whole) // 2]  # never rewritten as a fresh store

    db.write_bytes(whole)  # the documented recovery: the backup goes back
    with SessionStore(root) as store:
        resumed = rt.open_session(store=store, session_id=session_id)
        assert_goes_on(resumed, before)


def test_store_locked_by_another_connection_reports_and_saves_once_free(chat):
    before = committed(chat)
    other = sqlite3.connect(chat.store.db_path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match="is locked by another connection.*waited 0.1 s"):
            SessionStore(chat.store.root, busy_timeout=0.1)
        chat.runtime.replay.push(Reply().text("Answered.").eos())
        done = chat.ask("Are you there?")
        assert done.finish_reason == "eos" and text_of(done) == "Answered."
        (error,) = done.errors
        assert error.source == "store" and "turn 2 is not saved yet" in error.message
        assert "is locked by another connection" in error.message
        assert committed(chat) == before  # reading still works; nothing half-written
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert_goes_on(chat, before)  # the next turn saves the one left behind too


def test_store_turn_whose_image_file_is_gone_leaves_the_context_and_the_session_goes_on(chat, rt):
    before = committed(chat)
    (image_id,) = chat.history[0].request.image_ids
    chat.store.image_path(image_id).unlink()
    with SessionStore(chat.store.root) as store:  # a later run resumes the session
        resumed = rt.open_session(store=store, session_id=chat.id)
        events, done = reply_turn(resumed, Reply().text("Still talking.").eos(), "And now?")
        assert done.ok and text_of(done) == "Still talking."
        (left,) = notices(events)
        assert left.startswith("turn 0 left the model's context: image ") and image_id in left
        assert "missing from the store" in left
        done = resumed.ask("Show it again.", ["version:1"])
        assert_refused(resumed, done, "input", "image 1:", image_id, "missing from the store")
        assert_goes_on(resumed, before)


@contextmanager
def file_size_limit(nbytes: int):
    """No file of this process may grow past ``nbytes`` (a disk that is full for it), for the
    block only; writes past it fail with EFBIG instead of killing the process."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def just_room_for(root: Path) -> int:
    """A file-size limit that the store's files fit under now, with no room for another page."""
    return max(p.stat().st_size for p in root.rglob("*") if p.is_file()) + 1024


def store_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                  and not p.name.startswith("sessions.sqlite3"))


def test_store_disk_full_while_saving_a_picture_fails_the_turn_and_loses_nothing(chat):
    before = committed(chat)
    root = chat.store.root
    limit = just_room_for(root)
    side = int((2 * limit / 3) ** 0.5) + 64  # noise does not compress: its PNG is past the limit
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8))
    files = store_files(root)
    with file_size_limit(limit):
        done = chat.ask("What is this?", [noise])
    (refused, unsaved) = done.errors
    assert done.finish_reason == "error" and refused.source == "store"
    assert refused.message.startswith("image 1 could not be saved: cannot save image ")
    assert "File too large" in refused.message and "nothing was written" in refused.message
    assert unsaved.source == "store" and "turn 2 is not saved yet" in unsaved.message
    assert "is the disk full?" in unsaved.message
    assert store_files(root) == files  # no half-written picture, no temporary file
    assert committed(chat) == before
    assert_goes_on(chat, before)  # the disk is back: the failed turn is saved with the next
    assert chat.store.turns(chat.id)[2].status == "failed"


def test_store_disk_full_while_committing_a_turn_reports_and_saves_once_free(chat):
    before = committed(chat)
    chat.runtime.replay.push(Reply().text("Answered.").eos())
    with file_size_limit(just_room_for(chat.store.root)):
        done = chat.ask("Are you there?")
    assert done.finish_reason == "eos" and text_of(done) == "Answered."
    (error,) = done.errors
    assert error.source == "store" and "turn 2 is not saved yet" in error.message
    assert "this write was not saved, what was saved before is intact" in error.message
    assert committed(chat) == before
    assert_goes_on(chat, before)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES],
                         ids=["ENOSPC", "EROFS", "EACCES"])
def test_store_picture_write_refused_fails_the_turn_and_loses_nothing(chat, monkeypatch, code):
    before = committed(chat)
    images = chat.store.images_dir
    real_save = Image.Image.save

    def refusing_save(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)) and Path(fp).is_relative_to(images):
            Path(fp).write_bytes(b"\x89PNG\r\n\x1a\n")  # a first block reached the disk
            raise OSError(code, os.strerror(code), str(fp))
        return real_save(self, fp, format, **params)

    files = store_files(chat.store.root)
    monkeypatch.setattr(Image.Image, "save", refusing_save)
    done = chat.ask("What is this?", [synthetic_image(40, 30, seed=code)])
    assert_refused(chat, done, "store", "image 1 could not be saved: cannot save image",
                   os.strerror(code), "nothing was written")
    assert store_files(chat.store.root) == files
    monkeypatch.setattr(Image.Image, "save", real_save)
    chat.runtime.replay.push(Reply().text("Seen now.").eos())
    assert chat.ask("What is this?", [synthetic_image(40, 30, seed=code)]).ok  # saved this time
    assert_goes_on(chat, before)


def test_store_drawn_picture_refused_rolls_the_turn_back_and_the_session_goes_on(
        chat, monkeypatch):
    before = committed(chat)
    cached = chat.cached_tokens
    images = chat.store.images_dir
    real_save = Image.Image.save

    def full_disk(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)) and Path(fp).is_relative_to(images):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))
        return real_save(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    chat.runtime.replay.push(Reply().text("Here:").image(seed=1).eos())
    done = chat.ask("Draw a circle.", num_inference_steps=1)
    assert_refused(chat, done, "store", "cannot save image", "No space left on device")
    assert chat.cached_tokens == cached  # rolled back: the model's context is as it was
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert_goes_on(chat, before)


def test_store_drawn_picture_whose_file_is_gone_is_left_out_of_follow_ups(chat, rt):
    """A follow-up is answered without the lost picture (with a notice); an edit of it is
    refused, since there is nothing left to edit."""
    chat.runtime.replay.push(Reply().text("Here:").image(seed=2).eos())
    drawn = chat.ask("Draw a circle.", num_inference_steps=1)
    (picture,) = [p for p in drawn.parts if isinstance(p, ImagePart)]
    before = committed(chat)
    chat.store.image_path(picture.image_id).unlink()
    with SessionStore(chat.store.root) as store:
        resumed = rt.open_session(store=store, session_id=chat.id)
        events, done = reply_turn(resumed, Reply().text("A circle, I think.").eos(),
                                  "What colour is it?")
        assert done.ok and text_of(done) == "A circle, I think."
        assert any(n.startswith("the latest picture is not shown to the model: image ")
                   and picture.image_id in n for n in notices(events)), notices(events)
        assert resumed.history[-1].context.image_ids == ()
        done = resumed.ask("Make it blue.", edit=True)
        assert_refused(resumed, done, "input", "nothing to edit: the latest picture is gone",
                       picture.image_id)
        assert_goes_on(resumed, before)


def test_store_database_write_refused_reports_and_saves_once_allowed(chat):
    before = committed(chat)
    chat.store._db.execute("PRAGMA query_only=ON")  # SQLite refuses every write from now on
    try:
        chat.runtime.replay.push(Reply().text("Answered.").eos())
        done = chat.ask("Are you there?")
    finally:
        chat.store._db.execute("PRAGMA query_only=OFF")
    assert done.finish_reason == "eos" and text_of(done) == "Answered."
    (error,) = done.errors
    assert error.source == "store" and "turn 2 is not saved yet" in error.message
    assert "the file system refuses it (attempt to write a readonly database)" in error.message
    assert committed(chat) == before
    assert_goes_on(chat, before)


# --- interrupted work -----------------------------------------------------------------------------

def test_nano_checkpoint_cut_off_mid_write_keeps_the_previous_one(tmp_path, monkeypatch):
    from seedx_nano.train import checkpoint as nano_ckpt

    path = tmp_path / "stages" / "vit" / "ckpt.pt"
    nano_ckpt.save_torch({"step": 100, "modules": {"vit": {"w": torch.ones(64)}}}, path)
    previous = path.read_bytes()
    real_save = torch.save

    def killed_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        data = Path(f).read_bytes()
        Path(f).write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("SIGINT while writing the checkpoint")

    monkeypatch.setattr(torch, "save", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        nano_ckpt.save_torch({"step": 200, "modules": {"vit": {"w": torch.zeros(64)}}}, path)
    monkeypatch.undo()
    assert path.read_bytes() == previous and [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]
    assert nano_ckpt.load_checkpoint(path)["step"] == 100  # training resumes from step 100

    # what a copy cut off halfway leaves (save_torch never does): a clear error, not a crash
    path.write_bytes(previous[: len(previous) // 2])
    with pytest.raises(nano_ckpt.CheckpointError) as err:
        nano_ckpt.load_checkpoint(path)
    assert str(path) in str(err.value) and "truncated or corrupt?" in str(err.value)
    assert "Delete it to train that stage again" in str(err.value)


@pytest.mark.parametrize("failure, status, words", [
    (KeyboardInterrupt("Ctrl-C"), 130, "interrupted"),
    (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), 2, "No space left on device"),
], ids=["interrupted", "disk_full"])
def test_seedx_convert_stopped_midway_leaves_nothing_that_looks_complete(
        tmp_path, monkeypatch, capsys, failure, status, words):
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)).state_dict()
    src, dst = tmp_path / "llm", tmp_path / "out"
    save_sharded_bin(state, src, 2)
    real_save, shards = writing._save_shard, []

    def fails_on_the_second_shard(tensors, path, metadata):
        shards.append(path)
        if len(shards) == 2:
            path.write_bytes(b"half a shard")
            raise failure
        real_save(tensors, path, metadata)

    monkeypatch.setattr(writing, "_save_shard", fails_on_the_second_shard)
    assert cli.main(["convert", str(src), str(dst), "--max-shard-size", "300"]) == status
    assert words in capsys.readouterr().err and len(shards) == 2
    assert list(dst.iterdir()) == []  # no shard, no index, no temporary file
    assert ckpt.find_weights(dst) is None
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        ckpt.list_shards(dst)
    monkeypatch.undo()
    assert cli.main(["convert", str(src), str(dst), "--max-shard-size", "300"]) == 0  # rerun
    assert ckpt.find_weights(dst).name == "model.safetensors.index.json"


# --- scripts and API calls ------------------------------------------------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if a command loads a model (a bad script must be refused before that)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded for a script that is refused")
    monkeypatch.setattr("seedx_agent.cli.run.load_runtime", refuse)


def run_script_file(tmp_path, text: str, capsys) -> tuple[int, str]:
    script = tmp_path / "script.yaml"
    script.write_text(text)
    status = cli.main(["run", str(script), "--out", str(tmp_path / "out")])
    return status, capsys.readouterr().err


def test_script_and_api_unknown_keys_are_named(chat, tmp_path, capsys, no_model_load):
    before = committed(chat)
    with pytest.raises(CliError) as err:
        parse_script({"tittle": "x", "turns": [{"text": "hi", "guidance": 5}]}, "s.yaml")
    message = str(err.value)
    assert "(script): unknown key 'tittle' (a script takes: " in message and "title" in message
    assert "turns[0]: unknown key 'guidance' (a turn takes: " in message
    assert "guidance_scale" in message
    status, err = run_script_file(tmp_path, "turns:\n  - {text: hi, sead: 7}\n", capsys)
    assert status == 2 and "turns[0]: unknown key 'sead'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

    with pytest.raises(ValidationError, match="guidance\n  Extra inputs are not permitted"):
        chat.ask("Hello?", guidance=5)
    assert committed(chat) == before and len(chat.history) == 2  # nothing ran, nothing recorded
    assert_goes_on(chat, before)


def test_script_and_api_wrong_types_are_named(chat, tmp_path, capsys, no_model_load):
    before = committed(chat)
    script = tmp_path / "typed.yaml"
    script.write_text("seed: many\nturns:\n  - {text: hi, max_new_tokens: lots, edit: maybe}\n"
                      "  - {text: [not, a, string]}\n")
    with pytest.raises(CliError) as err:
        load_script(script)
    message = str(err.value)
    assert str(script) in message and "seed: Input should be a valid integer" in message
    assert "turns[0].max_new_tokens: Input should be a valid integer" in message
    assert "turns[0].edit: Input should be a valid boolean" in message
    assert "turns[1].text: Input should be a valid string" in message

    with pytest.raises(ValidationError, match="seed\n  Input should be a valid integer"):
        chat.ask("Hello?", seed="many")
    with pytest.raises(ValidationError, match="max_new_tokens\n  Input should be greater"):
        chat.ask("Hello?", options=TurnOptions(max_new_tokens=0))
    with pytest.raises(TypeError, match="images must be a sequence of images"):
        chat.ask("Hello?", "picture.png")
    assert committed(chat) == before and len(chat.history) == 2
    assert_goes_on(chat, before)


def test_script_and_api_unknown_skill_is_refused_naming_the_installed_ones(
        chat, tmp_path, capsys, no_model_load):
    before = committed(chat)
    status, err = run_script_file(
        tmp_path, "model: tiny\nturns:\n  - {text: hi}\n  - {text: where is it, skill: grounding}\n"
                  "  - {text: hi, skill: groundng}\n", capsys)
    assert status == 2 and "turns[2].skill: unknown skill 'groundng'; installed: " in err
    assert "grounding" in err and not (tmp_path / "out").exists()

    done = chat.ask("Where is it?", skill="groundng")
    assert_refused(chat, done, "skills", "no skill named 'groundng'; installed: ", "grounding")
    assert_goes_on(chat, before)


def test_script_and_api_unknown_variant_is_refused_naming_the_known_ones(
        chat, rt, tmp_path, capsys, monkeypatch):
    before = committed(chat)
    monkeypatch.setitem(cli_model._RUNTIMES, ("tiny", repr(Placement.parse("cpu"))), rt)
    status, err = run_script_file(
        tmp_path, "model: tiny\nturns:\n  - {text: hi}\n  - {text: hi, variant: seed_x_eddit}\n",
        capsys)
    assert status == 2 and "turns[1].variant: unknown variant 'seed_x_eddit'" in err
    assert "seed_x_edit" in err and not (tmp_path / "out" / "store").exists()

    with pytest.raises(KeyError, match="unknown variant 'seed_x_eddit'; known: .*seed_x_edit"):
        rt.open_session(variant="seed_x_eddit")
    done = chat.ask("Hello?", variant="seed_x_eddit")
    assert_refused(chat, done, "variant", "seed_x_eddit")
    assert_goes_on(chat, before)


def test_script_and_api_unknown_preset_is_refused_naming_the_presets(tmp_path, capsys):
    with pytest.raises(FileNotFoundError) as err:
        seedx_agent.from_pretrained("nanoo")
    assert "'nanoo' is neither a preset (" in str(err.value) and "tiny" in str(err.value)
    status, err = run_script_file(tmp_path, "model: nanoo\nturns:\n  - {text: hi}\n", capsys)
    assert status == 2 and "seedx: error:" in err and "'nanoo' is neither a preset" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "store").exists()


def test_script_and_api_empty_turn_is_refused_and_the_session_goes_on(chat, tmp_path):
    before = committed(chat)
    with pytest.raises(CliError, match=r"turns: List should have at least 1 item"):
        parse_script({"title": "nothing", "turns": []}, "empty.yaml")
    for nothing in ("", "   \n"):
        done = chat.ask(nothing)
        assert_refused(chat, done, "input", "an empty turn: no text and no image")
    assert len(chat.runtime.replay) == 0  # the model was never asked
    assert_goes_on(chat, before)
