"""How much memory a placement needs, per device, before a single weight is read.

A 17B multimodal stack that does not fit fails late (after minutes of loading, with a CUDA OOM
in the middle of a first picture). This module answers "will it fit?" up front, from the
checkpoint's own shapes (safetensors headers, pickles opened memory-mapped: `read_manifest`
reads no tensor data) or, with ``official_shapes``, from the full-size manifests of the release
shipped in ``core_models/assets/manifests``.

What is counted, per device (all in bytes; the printed units are GiB = 2**30):

* **weights** of each component in its planned dtype: ``params x itemsize``. A quantized LLM
  counts its decoder linear layers (`core_models.quantization.quantizable_linears`' selection, by name)
  as ``int8``: 1 byte/param + one scale per output row in the compute dtype; ``nf4``: 0.5
  byte/param + one fp32 absmax per block of 64 (0.0625 byte/param; with double quantization an
  8-bit absmax + one fp32 per 256 blocks). Embeddings, ``lm_head`` and norms stay in the dtype.
* **KV cache**: ``2 x layers x kv_dim x context x batch x itemsize`` on the LLM's device; context
  defaults to `DEFAULT_CONTEXT` = 4096 (Llama-2's trained context: the release's config says
  2048, which transformers 5's RoPE does not enforce, so longer sessions happen), batch 1.
* **LLM workspace** (a prefill of the whole context): ``batch x context x (4 x hidden + 3 x
  intermediate) x itemsize`` for the hidden states and MLP intermediates, plus ``batch x context
  x vocab x 4`` for fp32 logits.
* **UNet workspace** at the de-tokenizer's image size (1024x1024): ``branches x 40 x (size/8)^2
  x c0 x itemsize``: 3 guidance branches (stage 2's image + text guidance; stage 1 has 2), c0 the
  UNet's first block width (320), 40 live feature maps of that size (skip connections, ResNet
  temporaries) as a generous bound. **VAE decode**: ``4 x tile^2 x c_vae x itemsize'`` (fp32 when
  the VAE is fp16 and upcasts), tile = the image (or half of it, tiled).
* **transient** components (offloaded: on their execution device only while they run) add the
  largest of them (a de-tokenizer stage + the VAE) while drawing; drawing and the LLM's prefill
  never overlap, so the peak is ``resident + KV + max(LLM workspace, transient + render
  workspace) + overhead``, overhead = 1 GiB per CUDA device (context, allocator slack).
* on the storage device (CPU RAM): offloaded components, and, for a quantized LLM, the dense LLM
  staged there while it is quantized (the load-time peak).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .placement import STORAGE_DEVICE, Placement

Shapes = Mapping[str, tuple[int, ...]]

GiB = 2 ** 30
DEFAULT_CONTEXT = 4096
CUDA_OVERHEAD = GiB
UNET_LIVE_MAPS = 40
VAE_LIVE_MAPS = 4
NF4_BLOCK = 64
NF4_DOUBLE_QUANT_BLOCK = 256
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
QUANTIZED_NAME = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
"""The decoder linear weights quantized (the selection of `core_models.quantization.quantizable_linears`,
by name, since no module is built here)."""

OFFICIAL_MANIFESTS = {  # component -> manifest file under core_models/assets/manifests
    "vit": "qwen_vit_G_448.json",
    "llm": "seed_x_i/llm_hf.json",
    "agent": "seed_x_i/agent_pytorch_model.json",
    "detokenizer_stage1": "detokenizer_first_stage_SDXLAdapter.json",
    "detokenizer_stage2": "detokenizer_second_stage_SDXLAdapterWithLatentImage.json",
}
PLACEMENT_COMPONENT = {"vit": "vit", "llm": "llm", "agent": "agent", "detokenizer_stage1":
                       "detokenizer", "detokenizer_stage2": "detokenizer", "vae": "vae"}


def manifests_dir() -> Path:
    import core_models

    return Path(core_models.__file__).parent / "assets" / "manifests"


# ------------------------------------------------------------------------------------------------
# Where the shapes come from
# ------------------------------------------------------------------------------------------------
@dataclass
class StackShapes:
    """``{component: {key: shape}}`` plus the sizes that are not weights."""

    source: str
    components: dict[str, dict[str, tuple[int, ...]]]
    context: int
    image_size: int
    unet_c0: int
    vae_c0: int
    notes: list[str] = field(default_factory=list)


def official_shapes() -> StackShapes:
    """SEED-X-17B from the shipped manifests; the VAE (no manifest) built on the meta device."""
    from core_models.config import SeedXConfig

    root = manifests_dir()
    components = {}
    for name, file in OFFICIAL_MANIFESTS.items():
        raw = json.loads((root / file).read_text())
        components[name] = {k: tuple(v[0]) for k, v in raw.items()}
    cfg = SeedXConfig.official()
    components["vae"] = _meta_vae_shapes(cfg.vae)
    return StackShapes(source="official SEED-X-17B manifests (core_models/assets/manifests)",
                       components=components, context=DEFAULT_CONTEXT,
                       image_size=cfg.image_size, unet_c0=cfg.unet["block_out_channels"][0],
                       vae_c0=cfg.vae["block_out_channels"][0])


def tree_shapes(root: str | Path, variant: str = "seed_x_i") -> StackShapes:
    """The release tree at ``root``, from file headers only (`read_manifest`: no tensor data)."""
    from core_models.checkpoint import CheckpointError, SeedXPaths, read_manifest
    from core_models.stack import config_from_paths

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no model folder at {root}")
    paths = SeedXPaths.resolve(root, variant)
    notes: list[str] = []
    cfg = config_from_paths(paths)

    def read(label: str, path: Path | None, keep=None) -> dict[str, tuple[int, ...]] | None:
        if path is None or not Path(path).exists():
            notes.append(f"{label}: not in the tree, not counted")
            return None
        try:
            shapes = read_manifest(path, key_filter=keep)
        except (CheckpointError, FileNotFoundError) as exc:
            notes.append(f"{label}: unreadable ({exc}), not counted")
            return None
        return {k: tuple(s) for k, s in shapes.items()}

    components: dict[str, dict[str, tuple[int, ...]]] = {}
    found = {
        "vit": read("vit", paths.vit, lambda k: not k.startswith("transformer.")
                    or k.startswith("transformer.visual.")),
        "llm": read("llm", paths.llm),
        "agent": read("agent", paths.agent, lambda k: not k.startswith("llm.")),
    }
    unet = read("SDXL UNet", paths.sdxl / "unet" if paths.sdxl else None)
    if unet is not None and paths.detokenizer_stage1 is not None:
        overlay = read("stage-1 de-tokenizer", paths.detokenizer_stage1,
                       lambda k: k.startswith("resampler."))
        if overlay is not None:  # the stage-1 file overwrites UNet weights; adds the resampler
            found["detokenizer_stage1"] = {**{f"unet.{k}": s for k, s in unet.items()}, **overlay}
    found["detokenizer_stage2"] = read("stage-2 de-tokenizer", paths.detokenizer_stage2)
    found["vae"] = read("VAE", paths.sdxl / "vae" if paths.sdxl else None)
    components = {k: v for k, v in found.items() if v is not None}
    if "llm" not in components:
        raise FileNotFoundError(f"{root}: no readable LLM weights for variant {variant!r}, "
                                f"nothing to plan ({'; '.join(notes)})")
    return StackShapes(source=f"{root} ({variant}, file headers)", components=components,
                       context=DEFAULT_CONTEXT,
                       image_size=cfg.image_size, unet_c0=cfg.unet["block_out_channels"][0],
                       vae_c0=cfg.vae["block_out_channels"][0], notes=notes)


def _meta_vae_shapes(vae_config: Mapping) -> dict[str, tuple[int, ...]]:
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(dict(vae_config))
    return {k: tuple(v.shape) for k, v in vae.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# The plan
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ComponentEstimate:
    name: str
    params: int
    quantized_params: int
    dtype: str
    quantization: str | None
    bytes: int
    lives_on: str
    runs_on: str
    transient: bool  # offloaded: on runs_on only while it runs


@dataclass(frozen=True)
class Term:
    """One workspace term of the estimate, with the formula that gave it."""

    name: str
    bytes: int
    formula: str


@dataclass
class MemoryPlan:
    source: str
    placement: str
    profile: str | None
    components: list[ComponentEstimate]
    terms: list[Term]
    peak: dict[str, int]
    budget: dict[str, int]
    context: int
    batch: int
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(self.peak.get(d, 0) <= b for d, b in self.budget.items())

    def over_budget(self) -> dict[str, tuple[int, int]]:
        return {d: (self.peak.get(d, 0), b) for d, b in self.budget.items() if self.peak.get(d, 0) > b}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fits"] = self.fits
        return out

    def format(self) -> str:
        lines = [f"memory plan for {self.source}",
                 f"placement: {self.placement}", ""]
        rows = [("component", "params", "dtype", "GiB", "lives on", "runs on")]
        for c in self.components:
            kind = c.quantization and f"{c.quantization} ({c.quantized_params / 1e9:.2f} B) + {c.dtype}"
            rows.append((c.name, f"{c.params / 1e9:.3f} B", kind or c.dtype, _gib(c.bytes),
                         c.lives_on, c.runs_on + (" (while in use)" if c.transient else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        lines += ["", f"workspace (context {self.context} tokens, batch {self.batch}):"]
        lines += [f"  {t.name}: {_gib(t.bytes)} GiB = {t.formula}" for t in self.terms]
        lines.append("")
        for device, peak in self.peak.items():
            budget = self.budget.get(device)
            verdict = ("no budget given" if budget is None else
                       f"of {_gib(budget)} GiB: {'fits' if peak <= budget else 'DOES NOT FIT'}")
            lines.append(f"estimated peak on {device}: {_gib(peak)} GiB {verdict}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def plan_memory(shapes: StackShapes, placement: Placement, *, context: int | None = None,
                batch: int = 1) -> MemoryPlan:
    """The estimate of `placement` for the components in ``shapes`` (see the module docstring)."""
    if placement.kind not in ("cpu", "gpu"):
        raise NotImplementedError(f"the memory plan covers one-device placements and the memory "
                                  f"profiles, not {placement.kind!r} (accelerate plans those "
                                  "layer by layer at load time)")
    context = context or shapes.context
    dtype = str(placement.torch_dtype()).removeprefix("torch.")
    item = ITEMSIZE[dtype]
    method = placement.quantization_method
    components = [_estimate(name, keys, placement, dtype, method if name == "llm" else None)
                  for name, keys in shapes.components.items()]

    llm = shapes.components["llm"]
    layers = len({k.split(".")[2] for k in llm if k.startswith("model.layers.")})
    vocab, hidden = llm["model.embed_tokens.weight"]
    kv_dim = llm["model.layers.0.self_attn.k_proj.weight"][0]
    inter = llm["model.layers.0.mlp.gate_proj.weight"][0]
    kv = 2 * layers * kv_dim * context * batch * item
    llm_ws = batch * context * (4 * hidden + 3 * inter) * item + batch * context * vocab * 4
    side = shapes.image_size // 8
    unet_ws = 3 * UNET_LIVE_MAPS * side * side * shapes.unet_c0 * item
    tile = shapes.image_size // 2 if placement.vae_tiling else shapes.image_size
    vae_item = 4 if dtype == "float16" else item  # fp16 SDXL VAE decodes upcast to fp32
    vae_ws = VAE_LIVE_MAPS * tile * tile * shapes.vae_c0 * vae_item
    terms = [
        Term("KV cache", kv, f"2 x {layers} layers x {kv_dim} x {context} tokens x {batch} x {item} B"),
        Term("LLM prefill", llm_ws, f"{batch} x {context} x (4 x {hidden} + 3 x {inter}) x {item} B"
                                    f" + {batch} x {context} x {vocab} x 4 B logits"),
        Term("UNet at {0}x{0}".format(shapes.image_size), unet_ws,
             f"3 branches x {UNET_LIVE_MAPS} x {side}^2 x {shapes.unet_c0} x {item} B"),
        Term("VAE decode", vae_ws, f"{VAE_LIVE_MAPS} x {tile}^2 x {shapes.vae_c0} x {vae_item} B"
                                   + (" (tiled)" if placement.vae_tiling else "")),
    ]

    llm_device = placement.device_for("llm")
    peak: dict[str, int] = {}
    devices = {c.runs_on for c in components} | {c.lives_on for c in components}
    render = [c for c in components if c.name.startswith("detokenizer") or c.name == "vae"]
    for device in sorted(devices, key=lambda d: (d == STORAGE_DEVICE, d)):
        resident = sum(c.bytes for c in components if c.lives_on == device)
        # transient components live in storage; while drawing, the biggest stage + the VAE visit
        visiting = [c for c in render if c.transient and c.runs_on == device and c.lives_on != device]
        stage = max((c.bytes for c in visiting if c.name != "vae"), default=0)
        vae_visit = sum(c.bytes for c in visiting if c.name == "vae")
        kv_here = kv if device == llm_device else 0
        llm_phase = llm_ws if device == llm_device else 0
        draws_here = any(c.runs_on == device for c in render)
        render_phase = stage + vae_visit + (max(unet_ws, vae_ws) if draws_here else 0)
        overhead = CUDA_OVERHEAD if device.startswith("cuda") else 0
        peak[device] = resident + kv_here + max(llm_phase, render_phase) + overhead

    notes = list(shapes.notes)
    if method is not None:
        staged = sum(c.params for c in components if c.name == "llm") * item
        storage = placement.staging_device
        # the de-tokenizer stages and the VAE load on first use, after the staged copy is gone
        peak[storage] = max(peak.get(storage, 0), staged)
        notes.append(f"load time: the dense LLM ({_gib(staged)} GiB in {dtype}) is staged on "
                     f"{storage} while its linear layers are quantized, one at a time, onto "
                     f"{llm_device}")
    budget = placement.budget_bytes()
    return MemoryPlan(source=shapes.source, placement=placement.describe(),
                      profile=placement.profile_name, components=components, terms=terms,
                      peak=peak, budget=budget, context=context, batch=batch, notes=notes)


def _estimate(name: str, keys: Mapping[str, tuple[int, ...]], placement: Placement, dtype: str,
              method: str | None) -> ComponentEstimate:
    item = ITEMSIZE[dtype]
    params = sum(math.prod(s) for s in keys.values())
    quantized = {k: s for k, s in keys.items() if method and QUANTIZED_NAME.match(k)}
    qparams = sum(math.prod(s) for s in quantized.values())
    size = (params - qparams) * item
    if method == "int8":
        size += qparams + sum(s[0] for s in quantized.values()) * item
    elif method == "nf4":
        blocks = math.ceil(qparams / NF4_BLOCK)
        double = bool((placement.quantization or {}).get("double_quant"))
        scales = blocks + 4 * math.ceil(blocks / NF4_DOUBLE_QUANT_BLOCK) if double else 4 * blocks
        size += math.ceil(qparams / 2) + scales
    component = PLACEMENT_COMPONENT[name]
    runs_on = placement.device_for(component)
    lives_on = placement.storage_for(component)
    return ComponentEstimate(name=name, params=params, quantized_params=qparams, dtype=dtype,
                             quantization=method, bytes=size, lives_on=lives_on, runs_on=runs_on,
                             transient=lives_on != runs_on)
