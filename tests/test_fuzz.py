"""Property-based tests (hypothesis) of the three places untrusted input is turned into structure:
the reply parser (a model's free-running ids), any-res tiling (a picture of any size) and the
script loader (a user's YAML).

The parser's properties live in ``scripts/fuzz_parser.py`` (`check_stream`), so that this file
and the 100 000-stream runner check the same things; here hypothesis draws the streams and
shrinks a failure to a small one. Each bug the fuzzers found has a plain regression test below,
with the example they found.

CI runs a bounded, reproducible number of examples: the ``seedx-fuzz`` profile (no deadline, a
fixed ``max_examples``, derandomized under ``CI=true``), applied to each test rather than loaded,
so no other test module's hypothesis settings change.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core_models.any_res import (
    choose_resolution, image_token_block, parse_grids, patch_position_weights, patch_positions,
    process_anyres_image, select_best_resolution, select_best_resolution_v2, tile_boxes,
)
from core_models.boxes import LOC_BINS
from core_models.config import OFFICIAL_RESOLUTION_GRIDS
from core_models.image_io import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS
from core_models.qwen_vit import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, image_transform
from helpers import synthetic_image
from seedx_agent.cli.errors import CliError
from seedx_agent.cli.script import Script, load_script, parse_script
from seedx_agent.reply_parser import ReplyParser
from seedx_agent.turn_options import TurnOptions

ROOT = Path(__file__).resolve().parents[1]

settings.register_profile(
    "seedx-fuzz", deadline=None, max_examples=150, database=None, print_blob=True,
    derandomize=os.environ.get("CI", "").lower() == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ = settings.get_profile("seedx-fuzz")


def _fuzz_parser_module():
    spec = importlib.util.spec_from_file_location("fuzz_parser", ROOT / "scripts" / "fuzz_parser.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_parser"] = module   # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fz = _fuzz_parser_module()
TOKENIZER = fz.load_tokenizer()
VOCAB = fz.Vocabulary(TOKENIZER)


# === (a) the reply parser ========================================================================

def _image_run(n: int) -> st.SearchStrategy[list[int]]:
    """``<img>`` runs: whole, short, long, shuffled, with a tag inside, and maybe never closed."""
    t, placeholders = TOKENIZER, VOCAB.imgs[:n]
    body = st.one_of(
        st.just(placeholders),
        st.integers(0, n).map(lambda k: placeholders[:k]),
        st.integers(1, 3).map(lambda k: placeholders + VOCAB.imgs[n:n + k]),
        st.permutations(placeholders),
        st.tuples(st.integers(0, n), st.sampled_from(VOCAB.specials)).map(
            lambda at: placeholders[:at[0]] + [at[1]] + placeholders[at[0]:]),
    )
    close = st.sampled_from([[t.eoi_token_id]] * 9 + [[]])
    return st.tuples(body, close).map(lambda bc: [t.boi_token_id, *bc[0], *bc[1]])


def _box(extra_locs: bool) -> st.SearchStrategy[list[int]]:
    t = TOKENIZER
    pool = VOCAB.locs + (VOCAB.extra_locs if extra_locs else [])
    return st.lists(st.sampled_from(pool), min_size=0, max_size=6).map(
        lambda locs: [t.box_start_token_id, *locs, t.box_end_token_id])


def _chunk(n: int, extra_locs: bool) -> st.SearchStrategy[list[int]]:
    """One id or a short run, weighted (by repetition) as the runner weights them."""
    one = lambda ids: st.sampled_from(ids).map(lambda i: [i])  # noqa: E731
    out_of_range = VOCAB.extra_locs if extra_locs else []
    kinds = [
        (4, one(VOCAB.specials)), (3, one(VOCAB.locs)), (2, one(VOCAB.imgs)),
        (2, _image_run(n)), (2, _box(extra_locs)), (4, st.sampled_from(VOCAB.words)),
        (2, one(VOCAB.text_ids)), (1, one(VOCAB.undecodable)),
        (1, st.sampled_from(VOCAB.partial_chars)),
        (1, one(out_of_range) if out_of_range else st.sampled_from(VOCAB.words[-6:])),
    ]
    return st.one_of(*[s for w, s in kinds for _ in range(w)])


@st.composite
def reply_streams(draw) -> "fz.Stream":
    n = draw(st.sampled_from([64, 4, 1]))
    extra_locs = draw(st.booleans())
    chunks = draw(st.lists(_chunk(n, extra_locs), max_size=25))
    ids = tuple(i for c in chunks for i in c)
    size = st.tuples(st.integers(1, 4000), st.integers(1, 4000))
    return fz.Stream(
        ids=ids, open_box=draw(st.booleans()), num_img_tokens=n,
        finish_reason=draw(st.sampled_from(fz.FINISH_REASONS)), extra_locs=extra_locs,
        input_sizes=tuple(draw(st.lists(size, max_size=2))),
        generated_sizes=tuple(draw(st.lists(size, max_size=2))),
        chunks=tuple(draw(st.lists(st.integers(0, len(ids)), max_size=3))))


@settings(FUZZ, max_examples=200)
@given(reply_streams())
def test_parser_properties_hold_on_any_stream(stream):
    """Never raises; parts well formed; boxes in bins and in their picture; image slots right or
    warned about; finish reason consistent; one go == token by token == any feed_many split."""
    assert fz.check_stream(stream, TOKENIZER) == [], stream.reproducer()


@settings(FUZZ, max_examples=100)
@given(st.lists(st.integers(-2 ** 40, 2 ** 40) | st.integers(0, len(TOKENIZER) + 100),
                max_size=40))
def test_parser_survives_any_integers(ids):
    """Not only the weighted ids: any integer at all is text, a tag, or an undecodable id."""
    assert fz.check_stream(fz.Stream(ids=tuple(ids)), TOKENIZER) == []


def test_the_property_check_catches_a_broken_parser(monkeypatch):
    """The checker has teeth: a parser that calls a short image run complete is caught."""
    t = TOKENIZER
    stream = fz.Stream(ids=(t.boi_token_id, *VOCAB.imgs[:3], t.eoi_token_id))
    assert fz.check_stream(stream, t) == []
    close_image = ReplyParser._close_image

    def always_complete(self):
        self._img_count = self.num_img_tokens
        close_image(self)

    monkeypatch.setattr(ReplyParser, "_close_image", always_complete)
    broken = fz.check_stream(stream, t)
    assert any(b.startswith("complete-slot: slot 0 is complete") for b in broken), broken


def test_runner_reports_a_clean_run_and_its_numbers(capsys):
    assert fz.main(["--n", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "streams 100, tokens " in out and "crashes 0, violations 0" in out
    assert "streams/s" in out and "seed 1" in out


def test_runner_shrinks_a_crash_and_exits_non_zero(monkeypatch, capsys):
    """Break the parser on purpose: the runner must report it with a minimal reproducer."""
    t = TOKENIZER
    close_box = ReplyParser._close_box

    def explode(self, events):
        if self._box_locs[:1] == [7]:
            raise RuntimeError("planted")
        close_box(self, events)

    monkeypatch.setattr(ReplyParser, "_close_box", explode)
    stream = fz.Stream(ids=(*VOCAB.words[0], t.box_start_token_id, t.loc_token_ids[7],
                            t.loc_token_ids[9], t.box_end_token_id, t.eos_token_id))
    how = fz.failure(stream, t)
    assert how == "crash: RuntimeError: planted"
    small = fz.shrink(stream, t, how)
    assert small.ids == (t.box_start_token_id, t.loc_token_ids[7], t.box_end_token_id)

    monkeypatch.setattr(ReplyParser, "_close_box", lambda self, events: 1 / 0)
    assert fz.main(["--n", "100", "--seed", "2"]) == 1
    out = capsys.readouterr().out
    assert "crash: ZeroDivisionError" in out and "minimal: ids=[" in out
    assert "crashes 0," not in out


# --- regressions the parser fuzzers found ------------------------------------------------------

def test_loc_bin_beyond_the_224_bins_drops_the_box():
    """Found by scripts/fuzz_parser.py (seed 0, stream 33): a tokenizer with <loc-224>… gave a
    BoxPart with bin 269, and BoxPart's validator raised out of the parser."""
    stream = fz.Stream(ids=(1328, 1233, 1245, 1375, 1294, 1329), extra_locs=True)
    assert fz.check_stream(stream, TOKENIZER) == []
    tok = fz.WatchedTokenizer(TOKENIZER, fz.EXTRA_LOCS)
    parser = ReplyParser(tok)
    events = parser.feed_many([*TOKENIZER.encode("The car is at"), *stream.ids])
    reply = parser.finish()
    assert reply.boxes == [] and not any(type(e).__name__ == "BoxFound" for e in events)
    assert reply.text == "The car is at"
    assert len(reply.warnings) == 1
    assert f"<loc-269> is beyond the {LOC_BINS} bins" in reply.warnings[0]
    assert "[129, 141, 269, 190]" in reply.warnings[0]


@pytest.mark.parametrize("reason,eos_fed,message", [
    ("eos", False, "finished as 'eos' but no </s> was fed"),
    ("max_new_tokens", True, "finished as 'max_new_tokens' but </s> was fed at token 1"),
])
def test_a_finish_reason_the_ids_contradict_is_reported(reason, eos_fed, message):
    """The caller's reason is kept (it knows why decoding stopped), and the contradiction is
    reported rather than passed on silently."""
    t = TOKENIZER
    parser = ReplyParser(t)
    parser.feed_many(t.encode("ok")[:1] + ([t.eos_token_id] if eos_fed else []))
    reply = parser.finish(reason)
    assert reply.finish_reason == reason and reply.warnings == (message,)


# === (b) any-res tiling ==========================================================================

GRIDS = list(OFFICIAL_RESOLUTION_GRIDS)
BASE = 448
grid_lists = st.one_of(
    st.just(GRIDS), st.just(["1x1"]),
    st.lists(st.sampled_from(GRIDS + ["5x1", "1x5", "3x3", "2x3", "1X2"]), min_size=1, max_size=8,
             unique=True))


@st.composite
def allowed_sizes(draw, longest: int = 4096) -> tuple[int, int]:
    """A ``(width, height)`` that ``image_io.load_image`` accepts: sides 1..longest, within its
    aspect-ratio and pixel limits."""
    long_side = draw(st.integers(1, longest))
    short_side = draw(st.integers(max(1, math.ceil(long_side / DEFAULT_MAX_ASPECT_RATIO)),
                                  long_side))
    size = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    assert size[0] * size[1] <= DEFAULT_MAX_PIXELS
    return size


@functools.lru_cache(maxsize=None)
def _encoded_block(views: int, num_img_tokens: int) -> list[int]:
    return TOKENIZER.encode(image_token_block(views, num_img_tokens))


def _check_layout(size, grids, base, num_img_tokens=64):
    """Every property of the tiling of a ``size`` picture that does not need its pixels."""
    pinpoints = parse_grids(grids, base)
    chosen = choose_resolution(size, pinpoints)
    assert chosen in pinpoints
    a, b = select_best_resolution(size, pinpoints), select_best_resolution_v2(size, pinpoints)
    assert chosen == (b if a[0] * a[1] > b[0] * b[1] else a)   # the smaller wins, A on ties
    cols, rows = chosen[0] // base, chosen[1] // base
    assert (cols * base, rows * base) == chosen and f"{cols}x{rows}" in [g.lower() for g in grids]

    boxes = tile_boxes(chosen, base)
    assert len(boxes) == cols * rows and len(set(boxes)) == len(boxes)
    assert all(0 <= l < r <= chosen[0] and 0 <= t < btm <= chosen[1] and r - l == btm - t == base
               for l, t, r, btm in boxes)
    assert [(t, l) for l, t, _, _ in boxes] == sorted((t, l) for l, t, _, _ in boxes)  # raster

    positions = patch_positions((cols, rows))
    views = cols * rows + 1
    assert positions.shape == (views, 2) and positions.dtype == torch.float32
    assert torch.isfinite(positions).all() and ((positions > 0) & (positions < 1)).all()
    assert positions[-1].tolist() == [0.5, 0.5]                  # the global view, last
    centres = torch.tensor([[(l + r) / 2 / chosen[0], (t + btm) / 2 / chosen[1]]
                            for l, t, r, btm in boxes]).reshape(-1, 2)
    torch.testing.assert_close(positions[:-1], centres, rtol=0, atol=1e-6)
    weights = patch_position_weights(positions)
    torch.testing.assert_close(weights.sum(-1), torch.ones(views), rtol=0, atol=1e-6)

    ids = _encoded_block(views, num_img_tokens)
    t = TOKENIZER
    assert len(ids) == views * (num_img_tokens + 2)
    assert ids.count(t.bop_token_id) == ids.count(t.eop_token_id) == views - 1
    assert ids.count(t.boi_token_id) == ids.count(t.eoi_token_id) == 1
    assert ids[-num_img_tokens - 2] == t.boi_token_id and ids[-1] == t.eoi_token_id
    assert ids[-num_img_tokens - 1:-1] == list(t.img_token_ids[:num_img_tokens])
    return cols, rows


@settings(FUZZ, max_examples=200)
@given(allowed_sizes(), grid_lists, st.sampled_from([64, 1, 100]))
def test_any_res_layout_for_any_allowed_size(size, grids, num_img_tokens):
    _check_layout(size, grids, BASE, num_img_tokens)


@settings(FUZZ, max_examples=100)
@given(st.tuples(st.integers(1, 20_000), st.integers(1, 20_000)), grid_lists)
def test_any_res_layout_beyond_the_input_limits(size, grids):
    """``load_image`` refuses these, but any-res itself rejects nothing (upstream tiles a
    1x1000 strip): a direct caller still gets a valid layout."""
    _check_layout(size, grids, BASE)


CLIP_LOW = min((0 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))
CLIP_HIGH = max((1 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD))


@settings(FUZZ, max_examples=25)
@given(allowed_sizes(longest=5 * 28), grid_lists,
       st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK"]))
def test_any_res_pixels_for_small_pictures(size, grids, mode):
    """The full pipeline, on a 28-pixel ViT side so that pictures stay tiny: the grid choice only
    depends on the size relative to the side, which the layout test covers at 448."""
    base = 28
    cols, rows = _check_layout(size, grids, base)
    image = synthetic_image(*size).convert(mode)
    out = process_anyres_image(image, grids, base_resolution=base)
    views = cols * rows + 1
    assert out.grid == (cols, rows) and out.num_views == views
    assert all(v.size == (base, base) for v in out.views)
    assert out.pixel_values.shape == (views, 3, base, base)
    assert out.pixel_values.dtype == torch.float32 and torch.isfinite(out.pixel_values).all()
    assert out.pixel_values.min() >= CLIP_LOW - 1e-5 and out.pixel_values.max() <= CLIP_HIGH + 1e-5
    assert torch.equal(out.patch_positions, patch_positions((cols, rows)))
    whole = image.convert("RGB").resize((base, base), Image.Resampling.BICUBIC)
    assert torch.equal(out.pixel_values[-1], image_transform(whole, base)[0])


@settings(FUZZ, max_examples=150)
@given(st.lists(st.text(st.sampled_from("0123456789xX²³¹١٢٣ -+.,"), max_size=6) | st.integers(),
                max_size=4))
def test_grid_names_parse_or_raise_one_clear_error(grids):
    try:
        pinpoints = parse_grids(grids, BASE)
    except ValueError as exc:
        assert "resolution grid" in str(exc) or "resolution_grids is empty" in str(exc)
        return
    assert len(pinpoints) == len(grids)
    assert all(w >= BASE and h >= BASE and w % BASE == h % BASE == 0 for w, h in pinpoints)


# --- regressions the any-res fuzzers found ------------------------------------------------------

@pytest.mark.parametrize("grid", ["²x1", "1x³"])
def test_grid_with_a_superscript_digit_is_a_clear_error(grid):
    """Found by test_grid_names_parse_or_raise_one_clear_error (grids=['²X0']): "²".isdigit()
    is true, so int() raised its own "invalid literal" message instead of the grid's."""
    with pytest.raises(ValueError, match=r"is not of the form 'COLSxROWS'"):
        parse_grids([grid], BASE)


def test_grid_that_is_not_a_string_is_a_clear_error():
    """Found by the same test (grids=[0]): a number in a config's resolution_grids raised
    AttributeError."""
    with pytest.raises(ValueError, match=r"resolution grid 2 is not a string"):
        parse_grids(["1x1", 2], BASE)


# === (c) the script loader =======================================================================

SCRIPT_KEYS = sorted(set(Script.model_fields) | set(TurnOptions.model_fields)
                     | {"text", "images", "revert_to"})
IMAGE_SPECS = ["a.png", "missing.png", "synthetic:8x8", "synthetic:0x5", "synthetic:5000x1",
               "synthetic:١x١", "version:1", "version:0", " version:2 ", "../a.png", "/", "",
               "a\0b", "x" * 300, "sub/" + "y" * 250 + "/z.png", "a.png/", "A.PNG"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 70, 2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(IMAGE_SPECS + SCRIPT_KEYS))
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(SCRIPT_KEYS) | st.text(max_size=8) | st.integers() | st.booleans()
        | st.none(), inner, max_size=4),
    max_leaves=12)

VALID = {
    "title": "fuzz", "model": "tiny", "seed": 3, "guidance_scale": 5.0,
    "turns": [
        {"text": "Where is the square?", "images": ["a.png"], "skill": "grounding"},
        {"text": "Draw a circle.", "seed": 7, "num_inference_steps": 2, "force_image": True},
        {"text": "Dress them.", "images": {"person": "a.png", "garment": "synthetic:8x8"}},
        {"text": "Back.", "revert_to": 1, "edit": True, "image_roles": "person,garment"},
    ],
}


# Values a script could plausibly hold for any key: right type or not, edge values included.
plausible = st.sampled_from([None, True, False, 0, -1, 1, 64, 65, 2 ** 64, -0.0, 0.5,
                             float("inf"), float("nan"), "", "tryon", "person,garment",
                             "x" * 300, [], ["a.png"], {}])


@st.composite
def near_valid_scripts(draw):
    """The valid script above with a few keys renamed, retyped, removed or added; about half of
    them still load, so the checks after validation (the picture files) are reached too."""
    script = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        turns = script.get("turns")
        places = [script] + ([t for t in turns if isinstance(t, dict)]
                             if isinstance(turns, list) else [])
        place = draw(st.sampled_from(places))
        keys = list(place)
        op = draw(st.sampled_from(["images"] * 4 + ["plausible"] * 3 + [
            "rename", "retype", "delete", "add"]))
        if op == "rename" and keys:
            key = draw(st.sampled_from(keys))
            new = draw(st.sampled_from(SCRIPT_KEYS) | st.sampled_from(
                [str(key).upper(), f"{key}s", f" {key}", str(key)[:-1]]) | st.text(max_size=8)
                | st.integers() | st.booleans())
            place[new] = place.pop(key)
        elif op == "retype" and keys:
            place[draw(st.sampled_from(keys))] = draw(values)
        elif op == "delete" and keys:
            del place[draw(st.sampled_from(keys))]
        elif op == "images" and place is not script:
            specs = st.one_of(*[st.sampled_from(IMAGE_SPECS)] * 3, st.text(max_size=10))
            images = draw(st.lists(specs, max_size=3) | st.dictionaries(
                st.sampled_from(["person", "garment", ""]) | st.text(max_size=5), specs,
                max_size=2))
            place["images"] = images
            if isinstance(images, dict):
                place.pop("image_roles", None)   # both at once is its own, already-tested error
        elif op == "plausible":
            place[draw(st.sampled_from(keys or SCRIPT_KEYS))] = draw(plausible)
        else:
            place[draw(st.sampled_from(SCRIPT_KEYS))] = draw(values)
    return script


YAML_BITS = ["turns:", "- ", "text:", "images:", "seed:", "{", "}", "[", "]", ", ", ": ", "\n",
             "  ", "&a ", "*a", "!!binary ", "!!set ", "<<: ", "? ", "!!python/object:os.system ",
             "%YAML 1.1\n", "---\n", "...\n", "\t", "'", '"', "|\n", ">\n", "~", "yes", ".nan",
             "0x1F", "2020-01-01", "a.png", "synthetic:8x8", "#", "!", "@", "%", "`"]
yaml_texts = st.lists(st.sampled_from(YAML_BITS) | st.text(max_size=4), max_size=30).map("".join)


def _dump(data) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


@pytest.fixture(scope="module")
def script_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scripts")
    synthetic_image(8, 8).save(folder / "a.png")
    return folder


def _load_or_refuse(path: Path) -> Script | None:
    """The loader's contract: a valid `Script`, or a `CliError` that names the file."""
    try:
        script = load_script(path)
    except CliError as exc:
        assert exc.message.strip() and str(path) in exc.message, exc.message
        return None
    assert isinstance(script, Script) and script.turns
    for turn in script.turns:   # what `seedx run` does with it next must work too
        assert isinstance(script.turn_options(turn), TurnOptions)
        for spec in turn.image_specs:
            assert isinstance(spec, str)
    return script


def _write(folder: Path, text: str | bytes) -> Path:
    path = folder / "script.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


@settings(FUZZ, max_examples=150)
@given(near_valid_scripts())
def test_near_valid_scripts_load_or_raise_cli_error(script_dir, data):
    _load_or_refuse(_write(script_dir, _dump(data)))


@settings(FUZZ, max_examples=100)
@given(values | st.dictionaries(st.sampled_from(SCRIPT_KEYS), values, max_size=5))
def test_arbitrary_yaml_structures_load_or_raise_cli_error(script_dir, data):
    _load_or_refuse(_write(script_dir, _dump(data)))
    # and straight into parse_script, which run.py also calls with a dict of its own
    try:
        assert isinstance(parse_script(data, "fuzz"), Script)
    except CliError as exc:
        assert exc.message.startswith("fuzz")


@settings(FUZZ, max_examples=150)
@given(yaml_texts | st.binary(max_size=60))
def test_arbitrary_yaml_text_loads_or_raises_cli_error(script_dir, text):
    _load_or_refuse(_write(script_dir, text))


image_names = st.one_of(
    st.sampled_from(IMAGE_SPECS), st.text(max_size=12),
    st.integers(200, 5000).map(lambda n: "n" * n),                      # past NAME_MAX
    st.lists(st.sampled_from(["..", ".", "a.png", "sub", "", "/", "x" * 256, "synthetic:2x2"]),
             min_size=1, max_size=4).map("/".join),
    st.integers(0, 10 ** 6).map(lambda n: f"synthetic:{n}x{n % 5000}"),
    st.integers(-3, 10 ** 6).map(lambda n: f"version:{n}"))


@settings(FUZZ, max_examples=150)
@given(st.lists(image_names, min_size=1, max_size=2), st.booleans())
def test_any_picture_name_loads_or_raises_cli_error(script_dir, names, by_role):
    """The pictures are the one part of a script checked against the file system."""
    images = dict(zip(["person", "garment"], names)) if by_role else names
    _load_or_refuse(_write(script_dir, _dump({"turns": [{"text": "hi", "images": images}]})))


def test_the_valid_script_loads(script_dir):
    """The fuzzers start from a script that does load, so their mutations are near misses."""
    script = _load_or_refuse(_write(script_dir, _dump(VALID)))
    assert script is not None and len(script.turns) == 4
    assert script.turn_options(script.turns[1]).seed == 7


# --- regressions the script fuzzers found --------------------------------------------------------

@pytest.mark.parametrize("spec,message", [
    ("x" * 300, "cannot look for the image file"),
    ("a\0b", "contains a NUL character"),
])
def test_image_names_no_file_system_takes_are_cli_errors(script_dir, spec, message):
    """A name longer than NAME_MAX raised OSError (ENAMETOOLONG) out of Path.is_file instead
    of a CliError (test_any_picture_name_loads_or_raises_cli_error: names=['n' * 256]). A NUL
    never crashed (is_file says False) but printed a raw NUL in "image file not found"."""
    path = _write(script_dir, _dump({"turns": [{"text": "hi", "images": [spec]}]}))
    with pytest.raises(CliError, match=message) as caught:
        load_script(path)
    assert f"{path}: turns[0].images[0]" in caught.value.message


def test_deeply_nested_yaml_is_a_cli_error(script_dir):
    """Found probing the loader for these tests: PyYAML composes recursively, so 600 nested
    lists raised RecursionError."""
    path = _write(script_dir, "turns: " + "[" * 600 + "]" * 600)
    with pytest.raises(CliError, match="nested too deeply"):
        load_script(path)


def test_a_key_given_twice_is_a_cli_error(script_dir):
    """Found probing the loader for these tests: not a crash, a silent loss: the second
    ``turns:`` replaced the first."""
    path = _write(script_dir, "turns: [{text: a}, {text: b}]\nturns: [{text: c}]\n")
    with pytest.raises(CliError, match="found the key 'turns' twice"):
        load_script(path)
    path = _write(script_dir, "turns:\n  - {text: a, seed: 1, seed: 2}\n")
    with pytest.raises(CliError, match="found the key 'seed' twice"):
        load_script(path)
    # a merge key's values may still be overridden, as YAML intends
    script = _load_or_refuse(_write(script_dir, "turns:\n  - {<<: {text: a, seed: 1}, seed: 2}\n"))
    assert script is not None and script.turns[0].seed == 2 and script.turns[0].text == "a"


@pytest.mark.parametrize("text,message", [
    ("yes: 1\nturns: [{text: a}]\n", "(script): the key True is not a name; keys are strings "
                                      "(YAML reads yes/no/on/off as booleans: quote it)"),
    ("turns: [{text: a, 3: b}]\n", "turns[0]: the key 3 is not a name; keys are strings"),
    ("~: 1\nturns: [{text: a}]\n", "(script): the key None is not a name; keys are strings"),
])
def test_a_key_that_is_not_a_string_is_named_as_written(script_dir, text, message):
    """Seen in the messages of test_arbitrary_yaml_structures_load_or_raise_cli_error:
    ``yes:`` was reported as "[1]: Keys should be strings", neither the key as written nor
    what to do about it."""
    with pytest.raises(CliError) as caught:
        load_script(_write(script_dir, text))
    assert message in caught.value.message
