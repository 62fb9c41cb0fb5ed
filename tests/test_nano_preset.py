"""The ``nano`` preset and ``adapters/``: peft LoRA adapters on one base LLM, switched per turn.

The model folder is a random-weight export at the Nano's sizes, written the way
``seedx_nano.train.export`` writes one (``SeedXStack.save_pretrained`` + peft adapters in
``adapters/<variant>/`` + ``nano_manifest.json``), in seconds rather than the smoke pipeline's
minutes. The adapters are random LoRA weights (B != 0), so every adapter really changes the
LLM's output.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from seedx_nano import tasks
from seedx_nano.world import Obj, Scene

ADAPTERS = ("seed_x_i", "seed_x_edit", "tryon")
ALL_STAGES = ["detok1", "detok2", "llm", "lora", "vae", "vit"]


def random_nano_export(root: Path, adapters: tuple[str, ...] = ADAPTERS,
                       finished: list[str] | None = None) -> Path:
    """A Nano-sized random-weight export at ``root`` (release layout + adapters + manifest)."""
    from peft import LoraConfig, get_peft_model

    from seedx_nano.config import nano_config
    from seedx_nano.train.lora import LORA_TARGETS
    from core_models.stack import SeedXStack
    from core_models.tokenizer import TINY_TOKENIZER_DIR, SeedXTokenizer

    vocab = len(SeedXTokenizer.from_pretrained(TINY_TOKENIZER_DIR))
    stack = SeedXStack.from_config(nano_config(vocab_size=vocab), seed=0)
    stack.save_pretrained(root, variant="seed_x_i", dtype=torch.float16, stages=(1, 2))
    for i, name in enumerate(adapters):
        torch.manual_seed(100 + i)
        llm = get_peft_model(copy.deepcopy(stack.agent.llm),
                             LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                        init_lora_weights=False, task_type="CAUSAL_LM"))
        llm.to(torch.float16).save_pretrained(str(root / "adapters" / name), safe_serialization=True)
        (root / "adapters" / name / "README.md").unlink(missing_ok=True)
    manifest = dict(model="SEED-X Nano", base_variant="seed_x_i", adapters=list(adapters),
                    finished_stages=finished if finished is not None else ALL_STAGES,
                    plan=dict(sample_steps=2, guidance=3.0), metrics={})
    (root / "nano_manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return random_nano_export(tmp_path_factory.mktemp("nano") / "export")


@pytest.fixture(scope="module")
def nano(export):
    from seedx_nano.preset import build_nano

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_nano(root=export)
    torch.set_num_threads(threads)


def scene_image() -> Image.Image:
    return Scene(96, 64, "white", (Obj("square", "blue", 0, 0, 24).at(8, 20),
                                   Obj("circle", "red", 0, 0, 20).at(60, 10))).render()


def reply_ids(session, text, images=(), **kw) -> tuple[int, ...]:
    session.ask(text, list(images), max_new_tokens=kw.pop("max_new_tokens", 8), **kw)
    return session.history[-1].context.reply_ids


# --- adapters as variants ---------------------------------------------------------------------------

def test_adapters_become_variants_on_one_base(nano):
    from seedx_agent.variants import AdapterWeights

    about = nano.describe()
    assert about["model"] == "nano" and about["untrained"] is False
    assert about["adapters"] == sorted(ADAPTERS) and "untrained_components" not in about
    for name in ADAPTERS:
        spec = nano.variants.get(name)
        assert spec.llm == AdapterWeights(base="seed_x_i", path=f"adapters/{name}")
    edit, tryon, chat = (nano.variants.get(n) for n in ("seed_x_edit", "tryon", "seed_x_i"))
    assert edit.detokenizer_stage == 2 and edit.single_image_edit and not edit.template.multi_turn
    assert tryon.detokenizer_stage == 2 and not tryon.single_image_edit
    assert chat.detokenizer_stage == 1 and len(chat.resolution_grids) == 8
    assert nano.variants.get("base").llm is None
    # one agent for all of them; the active adapter is what differs
    agents = {id(nano.agent(n)) for n in (*ADAPTERS, "base")}
    assert agents == {id(nano.stack.agent)}
    nano.agent("tryon")
    assert nano.adapters.active == "tryon" and nano.active_adapter(nano.stack.agent) == "tryon"
    nano.agent("base")
    assert nano.adapters.active is None
    # the LLM object every code path uses is the plain HF Llama, with LoRA layers inside
    assert type(nano.stack.agent.llm).__name__ == "LlamaForCausalLM"


def test_each_adapter_changes_the_reply_and_the_base_is_the_plain_llm(nano, export):
    from core_models.generation import GenerationSession
    from core_models.stack import SeedXStack

    replies = {v: reply_ids(nano.open_session(), "Describe the image.", [scene_image()], variant=v)
               for v in ("base", *ADAPTERS)}
    assert len(set(replies.values())) == len(replies), replies
    # "base" is the saved LLM with no adapter at all: same next-token logits as a stack loaded
    # without the adapters folder
    plain = SeedXStack.from_pretrained(export, "seed_x_i", dtype=torch.float32)
    ids = [nano.tokenizer.bos_token_id] + nano.tokenizer.encode("[INST] Draw a red circle. [/INST]\n")
    base_logits = GenerationSession(nano.agent("base"), nano.tokenizer).prefill(ids)
    plain_logits = GenerationSession(plain.agent, plain.tokenizer).prefill(ids)
    torch.testing.assert_close(base_logits, plain_logits, rtol=1e-4, atol=1e-4)
    tryon_logits = GenerationSession(nano.agent("tryon"), nano.tokenizer).prefill(ids)
    assert not torch.allclose(tryon_logits, plain_logits, atol=1e-3)


def test_switching_adapters_per_turn_keeps_each_cache_right(nano):
    """base -> tryon -> base -> seed_x_i -> base in one session gives, turn by turn, the tokens
    of a session that re-prefills the whole history every turn (keep_cache=False)."""
    image = scene_image()
    plan = [("base", "Describe the image.", [image]), ("tryon", "Where is the blue square?", []),
            ("base", "How many shapes are there?", []), ("seed_x_i", "Describe the image.", []),
            ("base", "Find all squares.", [])]
    cached, fresh = nano.open_session(), nano.open_session(keep_cache=False)
    got = {id(cached): [], id(fresh): []}
    for session in (cached, fresh):
        for variant, text, images in plan:
            got[id(session)].append(reply_ids(session, text, images, variant=variant))
    assert got[id(cached)] == got[id(fresh)]
    assert cached._kv_adapter == {"base": None, "tryon": "tryon", "seed_x_i": "seed_x_i"}
    # and the first base turn equals the same turn in a session that never switched
    assert got[id(cached)][0] == reply_ids(nano.open_session(), "Describe the image.", [image],
                                           variant="base")


def test_edit_adapter_renders_with_stage_2(nano):
    from seedx_agent.types import ImagePart

    session = nano.open_session()
    source = scene_image()
    done = session.ask("Make the square red.", [source], edit=True, force_image=True,
                       max_new_tokens=24, num_inference_steps=2)
    turn = session.history[-1]
    assert turn.variant == "seed_x_edit" and turn.context.in_context is False
    (edited,) = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert edited.provenance.detokenizer_stage == 2 and edited.provenance.variant == "seed_x_edit"
    assert edited.width / edited.height == pytest.approx(source.width / source.height, rel=0.03)


def test_tryon_adapter_conditions_stage_2_on_the_person(nano):
    from seedx_agent.types import ImagePart

    ex = tasks.make_example("tryon", __import__("random").Random(7))
    session = nano.open_session()
    done = session.ask(ex.instruction, ex.images, variant="tryon", force_image=True,
                       max_new_tokens=24, num_inference_steps=2)
    inputs = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "input"]
    (dressed,) = [p for p in done.parts if isinstance(p, ImagePart) and p.role == "edited"]
    assert dressed.provenance.detokenizer_stage == 2
    parents = dressed.provenance.parents
    assert parents[0] == inputs[0].image_id  # the person (the condition) first, then the garment
    assert set(parents) <= {p.image_id for p in inputs}
    assert dressed.width * ex.images[0].height == pytest.approx(dressed.height * ex.images[0].width,
                                                                rel=0.05)


def test_no_adapters_folder_changes_nothing(export, tmp_path):
    from seedx_agent.runtime import Runtime
    from seedx_agent.variants import BUILTIN_VARIANTS

    plain = tmp_path / "plain"
    shutil.copytree(export, plain, ignore=shutil.ignore_patterns("adapters", "nano_manifest.json"))
    rt = Runtime.from_pretrained(plain, load_plugins=False)
    assert rt.adapters is None and "adapters" not in rt.describe()
    assert rt.variants.names() == [v.name for v in BUILTIN_VARIANTS]
    assert rt.variants.get("seed_x_edit") == BUILTIN_VARIANTS[2]


# --- the preset -------------------------------------------------------------------------------------

def test_nano_is_a_preset_of_the_plugin_and_draws_with_the_manifest_defaults(export, monkeypatch):
    import seedx_agent
    import seedx_nano.preset
    from seedx_agent.presets import presets

    monkeypatch.setattr(seedx_nano.preset, "WEIGHTS_DIR", export)
    registered = presets()
    assert {"nano", "tiny"} <= set(registered)
    assert registered["nano"].build is seedx_nano.preset.build_nano
    rt = seedx_agent.from_pretrained("nano", load_plugins=False)
    assert rt.name == "nano" and rt.adapters is not None
    # the manifest's plan (sample_steps 2, guidance 3.0), not the official 50 / 7.5
    assert rt.render_defaults.num_inference_steps == 2 and rt.render_defaults.guidance_scale == 3.0
    assert rt.render_defaults.seed == 42 and rt.render_defaults.image_guidance_scale == 1.5


def test_a_nano_folder_loads_like_the_preset(export):
    """``from_pretrained(folder)`` (and ``--model folder``) on a Nano export: the preset claims
    it, so its manifest's render defaults and notice apply, not the release's 50 / 7.5."""
    import seedx_agent

    rt = seedx_agent.from_pretrained(str(export), load_plugins=False)
    assert rt.name == str(export) and rt.adapters is not None
    assert (rt.render_defaults.num_inference_steps, rt.render_defaults.guidance_scale) == (2, 3.0)
    assert rt.notice


def test_render_defaults_prefer_the_manifest_mapping(export, tmp_path):
    from seedx_nano.manifest import render_defaults
    from seedx_nano.preset import build_nano

    plan = dict(sample_steps=20, guidance=3.0)
    assert render_defaults(dict(plan=plan)) == dict(num_inference_steps=20, guidance_scale=3.0)
    given = dict(seed=7, num_inference_steps=5, guidance_scale=4.5, image_guidance_scale=1.2)
    assert render_defaults(dict(plan=plan, render_defaults=given)) == given
    assert render_defaults(None) == {}
    folder = tmp_path / "nano"
    shutil.copytree(export, folder, ignore=shutil.ignore_patterns("adapters"))
    manifest = json.loads((folder / "nano_manifest.json").read_text())
    manifest.update(adapters=[], render_defaults=dict(seed=7, num_inference_steps=3))
    (folder / "nano_manifest.json").write_text(json.dumps(manifest))
    rt = build_nano(root=folder, load_plugins=False)
    assert (rt.render_defaults.seed, rt.render_defaults.num_inference_steps) == (7, 3)
    assert rt.render_defaults.guidance_scale == 7.5  # not in the mapping: the runtime's default


def test_asking_for_nano_without_its_plugin_names_the_plugin():
    import seedx_agent
    import seedx_nano
    from seedx_agent.plugins import pm

    name = pm.get_name(seedx_nano)
    pm.unregister(seedx_nano)
    try:
        with pytest.raises(seedx_agent.PresetError, match="seedx_nano"):
            seedx_agent.from_pretrained("nano")
    finally:
        pm.register(seedx_nano, name=name)
    assert "nano" in seedx_agent.presets.presets()


def test_unfinished_nano_says_which_parts_are_untrained(export, tmp_path):
    """Only the ViT is trained (the state of a run's first stage): the rest are random stand-ins,
    and the runtime says so."""
    from seedx_nano.manifest import STAGE_COMPONENTS
    from seedx_nano.preset import build_nano

    partial = tmp_path / "partial"
    shutil.copytree(export, partial, ignore=shutil.ignore_patterns(
        "adapters", "seed_x_i", "stable-diffusion-xl-base-1.0", "seed_detokenizer"))
    manifest = json.loads((partial / "nano_manifest.json").read_text())
    manifest.update(finished_stages=["vit"], adapters=[])
    (partial / "nano_manifest.json").write_text(json.dumps(manifest))
    rt = build_nano(root=partial, load_plugins=False)
    assert rt.untrained and rt.adapters is None
    assert len(rt.untrained_components) == 5 and STAGE_COMPONENTS["llm"] in rt.untrained_components
    assert "UNFINISHED" in rt.notice and "LLM" in rt.notice and "ViT" not in rt.notice
    assert "python -m seedx_nano.train" in rt.notice
    assert rt.describe()["untrained_components"] == list(rt.untrained_components)
    # it still runs end to end (random LLM and de-tokenizer)
    done = rt.open_session().ask("Draw a red circle.", force_image=True, max_new_tokens=20,
                                 num_inference_steps=1)
    assert done.finish_reason in ("eos", "max_new_tokens")
    # the trained ViT was loaded, not left random
    from core_models.stack import load_vit
    vit = load_vit(partial / "QwenViT" / "qwen_vit_G.safetensors", vit=rt.config.vit,
                   dtype=torch.float32)
    assert torch.equal(next(vit.parameters()), next(rt.stack.vit.parameters()))


def test_missing_detokenizer_stages_get_random_stand_ins(export, tmp_path):
    """LLM trained, stage 2 not yet: stage 1 loads from the folder, stage 2 is random."""
    from core_models.stack import SeedXStack
    from seedx_nano.preset import build_nano

    folder = tmp_path / "no_detok2"
    shutil.copytree(export, folder, ignore=shutil.ignore_patterns("adapters", "second_stage"))
    manifest = json.loads((folder / "nano_manifest.json").read_text())
    manifest.update(finished_stages=["vit", "vae", "llm", "detok1"], adapters=[])
    (folder / "nano_manifest.json").write_text(json.dumps(manifest))
    rt = build_nano(root=folder, load_plugins=False)
    assert rt.untrained_components and "stage 2" in rt.notice
    shipped = SeedXStack.from_pretrained(export, "seed_x_i", dtype=torch.float32).detokenizer(1)
    assert torch.equal(next(rt.stack.detokenizer(1).parameters()), next(shipped.parameters()))
    assert rt.stack.detokenizer(2).unet.conv_in.in_channels == 8  # a random stage-2 stand-in


def test_default_preset_follows_the_manifest(tmp_path):
    """The Nano is the default model once the stages describing, grounding, counting and drawing
    need are trained (how well: the model card, not a gate)."""
    import seedx_agent
    from seedx_nano import manifest
    from seedx_nano.preset import nano_preset

    assert manifest.is_finished(tmp_path) is False  # no manifest
    (tmp_path / manifest.MANIFEST_NAME).write_text(json.dumps({"finished_stages": ["vit", "vae"]}))
    assert manifest.is_finished(tmp_path) is False
    (tmp_path / manifest.MANIFEST_NAME).write_text(
        json.dumps({"finished_stages": ["vit", "vae", "llm", "detok1"]}))
    assert manifest.is_finished(tmp_path) is True
    expected = manifest.is_finished()  # the shipped weights
    assert nano_preset().default is expected
    # what from_pretrained() and the CLI load when given no model
    assert seedx_agent.default_preset() == ("nano" if expected else "tiny")


def test_the_plugin_imports_without_torch():
    """Plugin discovery and the CLI import every plugin and list the presets at start-up."""
    code = ("import sys, seedx_agent, seedx_nano, seedx_nano.cli; "
            "from seedx_agent.presets import presets; assert 'nano' in presets(); "
            "print(seedx_agent.default_preset()); assert 'torch' not in sys.modules, 'torch'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("nano", "tiny")


def test_nano_adds_its_evaluation_to_the_eval_group():
    import click

    import seedx_nano

    cli = click.Group("seedx", commands=[click.Group("eval")])
    seedx_nano.register_commands(cli=cli)
    command = cli.commands["eval"].commands["nano"]
    assert {"--n", "--json", "--smoke", "--model", "--threads"} <= {
        opt for param in command.params for opt in param.opts}
