"""``SeedXStack``: every SEED-X component, built from a config or loaded from the release.

The official inference scripts build each component from a hydra yaml with hard-coded
``pretrained/`` paths and load all of them, on one device in fp16, whether the task needs them or
not. Here one object holds the pieces a request goes through, in data-flow order:

    tokenizer -> vit (Qwen-VL ViT) -> agent (ContinuousLVLM: Llama + resamplers) -> de-tokenizer

The two de-tokenizer stages (SDXL UNet + ``ResamplerXLV2``; stage 1 for generation, stage 2 for
editing) and the shared SDXL VAE are built *lazily on first use*: a comprehension-only user never
pays ~10 GB for SDXL, and an edit-only user never loads stage 1.

All loading goes through ``checkpoint.py`` (streamed, per-file key checks, device maps). The
per-component loaders (`load_vit`, `load_agent`, `load_detokenizer`, ...) are public too: they take
the component's constructor arguments rather than a whole ``SeedXConfig``, so components whose
sizes do not chain (the golden test fixtures) load individually through the same code.

``save_pretrained`` writes the release layout (with safetensors and a ``seedx_config.json``), so a
small model - the tiny test stack, a trained Nano - round-trips through the very loader that reads
the released 17B checkpoints.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from . import checkpoint as ckpt
from .checkpoint import (PEFT_PREFIX, DeviceMap, PathLike, SeedXPaths, empty_init,
                         load_into_model)
from .quantization import (QUANTIZATION_SKIP, quantizable_linears,  # noqa: F401 (public)
                           quantization_config, quantize_llm, single_device)
from .config import OFFICIAL_AGENT, OFFICIAL_LLM, SeedXConfig
from .files import write_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "seedx_config.json"
DEFAULT_DTYPE = torch.bfloat16
COMPONENT_KEYS = ("vit", "agent", "detokenizer", "vae")


# ------------------------------------------------------------------------------------------------
# dtype and device-map policy
# ------------------------------------------------------------------------------------------------
def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    """The load dtype. None -> bfloat16, logged.

    The release stores float32 (the LLM alone is 52 GB); loading it as stored is almost never
    what anyone wants, and transformers 5's ``"auto"`` would do exactly that. So no dtype means
    bf16 (what SFT trained in; fp16 is what the official inference scripts used) and a log line
    says so. Pass ``dtype=torch.float32`` to keep the stored precision.
    """
    if dtype is None:
        logger.warning("no dtype given: loading SEED-X in bfloat16 (the release stores float32; "
                       "pass dtype=torch.float32 to keep it, torch.float16 to match the official scripts)")
        return DEFAULT_DTYPE
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return dtype


def component_device_map(device_map: DeviceMap, component: str) -> DeviceMap:
    """The part of a stack-level device map that concerns one component.

    A stack map is either one device for everything (``"cuda:0"``, ``"auto"``, None = torch's
    default device) or a dict keyed by component (``vit``, ``agent``, ``detokenizer``, ``vae``) or
    by module paths inside one (``"agent.llm.model.layers.30": "cuda:1"``); ``""`` is the
    fallback. Module paths are made relative to the component.
    """
    if not isinstance(device_map, Mapping):
        return device_map
    sub: dict[str, Any] = {}
    for key, device in device_map.items():
        if key == component:
            sub[""] = device
        elif key.startswith(component + "."):
            sub[key[len(component) + 1:]] = device
    if "" not in sub:
        sub[""] = device_map.get("", torch.get_default_device())
    return sub


# ------------------------------------------------------------------------------------------------
# Configs read from the files
# ------------------------------------------------------------------------------------------------
def llm_config_from_folder(llm_dir: PathLike) -> dict[str, Any]:
    """The ``SeedXConfig.llm`` entries of an HF Llama ``config.json`` (4.30 or 5.x style).

    Only constructor arguments SEED-X uses are taken; ``pretraining_tp`` (a 4.30 slicing trick,
    ignored by v5) and bookkeeping fields are dropped, and so are extras at their defaults.
    """
    raw = json.loads((Path(llm_dir) / "config.json").read_text())
    out = {k: raw[k] for k in OFFICIAL_LLM if k in raw and raw[k] is not None}
    rope = raw.get("rope_parameters") or {}
    if "rope_theta" not in out and isinstance(rope, Mapping) and "rope_theta" in rope:
        out["rope_theta"] = rope["rope_theta"]
    if raw.get("head_dim") not in (None, raw["hidden_size"] // raw["num_attention_heads"]):
        out["head_dim"] = raw["head_dim"]
    if raw.get("mlp_bias"):
        out["mlp_bias"] = True
    if raw.get("rope_scaling") is not None:
        out["rope_scaling"] = raw["rope_scaling"]
    return out


def diffusers_config_from_folder(folder: PathLike, cls: type | None = None,
                                 keep: set[str] = frozenset()) -> dict[str, Any]:
    """A diffusers ``config.json`` / ``scheduler_config.json`` without its ``_*`` fields.

    With ``cls``, entries equal to its constructor default are dropped unless named in ``keep``
    (the keys ``SeedXConfig`` spells out), so a config read back equals the one written.
    """
    folder = Path(folder)
    name = "config.json" if (folder / "config.json").is_file() else "scheduler_config.json"
    raw = {k: v for k, v in json.loads((folder / name).read_text()).items() if not k.startswith("_")}
    if cls is None:
        return raw
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()}
    return {k: v for k, v in raw.items()
            if k in keep or k not in defaults or _jsonable(defaults[k]) != v}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _has_diffusers_config(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "scheduler_config.json").is_file()


def config_from_paths(paths: SeedXPaths, config: SeedXConfig | None = None) -> SeedXConfig:
    """A ``SeedXConfig`` derived from the files where they say something, official otherwise.

    ``<root>/seedx_config.json`` (written by `SeedXStack.save_pretrained`; absent in the release)
    gives the base; the LLM ``config.json`` and the SDXL ``unet``/``vae``/``scheduler`` configs
    override it. ViT and resampler sizes have no config file in the release, so they are the
    official ones unless ``seedx_config.json`` says otherwise.

    ``config``, when given, is returned as is: the caller knows the sizes (a custom-size tree
    without ``seedx_config.json``), so planning and loading both take the one config. When the
    derived sizes do not chain, the error says how to give them.
    """
    if config is not None:
        return config
    saved = paths.root is not None and (paths.root / CONFIG_FILE).is_file()
    try:
        return SeedXConfig.from_dict(_config_entries(paths, saved))
    except ValueError as exc:
        raise ValueError(_sizes_do_not_chain(paths, saved, exc)) from exc


def _config_entries(paths: SeedXPaths, saved: bool) -> dict[str, Any]:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    base = json.loads((paths.root / CONFIG_FILE).read_text()) if saved else {}
    defaults = SeedXConfig.from_dict(base)
    if paths.llm is not None and (paths.llm / "config.json").is_file():
        base["llm"] = {**base.get("llm", {}), **llm_config_from_folder(paths.llm)}
    if paths.sdxl is not None:
        for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL),
                          ("scheduler", EulerDiscreteScheduler)):
            if _has_diffusers_config(paths.sdxl / part):
                base[part] = diffusers_config_from_folder(paths.sdxl / part, cls,
                                                          keep=set(getattr(defaults, part)))
        if not saved and "unet" in base and "vae" in base:
            vae_blocks = base["vae"].get("block_out_channels", defaults.vae["block_out_channels"])
            base["image_size"] = base["unet"].get("sample_size", defaults.unet["sample_size"]) * 2 ** (
                len(vae_blocks) - 1)
    return base


def _sizes_do_not_chain(paths: SeedXPaths, saved: bool, exc: ValueError) -> str:
    where = paths.root if paths.root is not None else "the given paths"
    why = (f"{where / CONFIG_FILE} and the component config files disagree" if saved else
           f"{where} has no {CONFIG_FILE}, so the ViT and resampler sizes (which no other file "
           f"records) were taken as the official SEED-X-17B ones")
    return (f"{exc}\n{why}. Either pass config= (a SeedXConfig with this tree's sizes) to "
            f"Runtime.from_pretrained / SeedXStack.from_pretrained, or put a {CONFIG_FILE} at the "
            f"tree's root (SeedXConfig.save(root / '{CONFIG_FILE}') writes one).")


# ------------------------------------------------------------------------------------------------
# Per-component loaders
# ------------------------------------------------------------------------------------------------
def build_agent(llm: Mapping, input_resampler: Mapping, output_resampler: Mapping,
                agent: Mapping | None = None, attn_implementation: str | None = None) -> nn.Module:
    """``ContinuousLVLM.from_config`` from the four component dicts (it reads nothing else)."""
    from .mllm import ContinuousLVLM

    parts = SimpleNamespace(llm=dict(llm), input_resampler=dict(input_resampler),
                            output_resampler=dict(output_resampler),
                            agent=dict(OFFICIAL_AGENT if agent is None else agent))
    return ContinuousLVLM.from_config(parts, attn_implementation=attn_implementation)


def load_vit(path: PathLike, *, vit: Mapping, dtype: torch.dtype, device_map: DeviceMap = None,
             offload_folder: PathLike | None = None, progress: bool | None = None) -> nn.Module:
    """The Qwen-VL ViT from ``qwen_vit_G.{pt,safetensors}`` or straight from Qwen-VL-Chat shards
    (``transformer.visual.*`` kept and stripped, the language model's keys ignored)."""
    from .qwen_vit import VisionTransformerWithAttnPool

    with empty_init():
        model = VisionTransformerWithAttnPool(**vit)
    key_map = ckpt.qwen_visual_key_map if ckpt.is_qwen_vl_chat_checkpoint(path) else ckpt.identity_key_map
    load_into_model(model, path, dtype, device_map, key_map=key_map, label=f"ViT {path}",
                    offload_folder=offload_folder, progress=progress)
    return model.eval()


def load_agent(llm_path: PathLike, agent_path: PathLike, *, input_resampler: Mapping,
               output_resampler: Mapping, dtype: torch.dtype, agent: Mapping | None = None,
               llm: Mapping | None = None, device_map: DeviceMap = None,
               lora_scaling: float = 1.0, attn_implementation: str | None = None,
               offload_folder: PathLike | None = None, progress: bool | None = None,
               quantization: Mapping[str, Any] | None = None,
               staging_device: Any = None) -> nn.Module:
    """``ContinuousLVLM``: the ``llm/`` folder into ``.llm``, then the agent file over it.

    The agent file must hold ``input_resampler.*``, ``output_resampler.*`` and
    ``patch_pos_embed``. Whether the released file also carries ``llm.*`` tensors is unknown
    (manifests/index.json), so both possibilities are handled, with a warning:

    * plain merged names (``llm.model.*``, ``llm.lm_head.weight``) override the llm folder, as
      upstream's non-strict ``load_state_dict`` did;
    * a peft LoRA training dump (``llm.base_model.model.*``) is merged into dense weights,
      W + lora_scaling * B @ A (`checkpoint.PeftLoraMergedView`; SEED-X trained r = alpha = 32,
      so the scaling is 1.0).

    ``llm`` defaults to the folder's ``config.json``. ``quantization`` (``{"method": "nf4" |
    "int8"}``): the whole agent is read densely onto ``staging_device`` (default: the target),
    then `quantize_llm` quantizes the decoder linear layers onto the one target device.
    """
    llm = dict(llm) if llm is not None else llm_config_from_folder(llm_path)
    with empty_init():
        model = build_agent(llm, input_resampler, output_resampler, agent, attn_implementation)
    target = None
    if quantization:
        target = single_device(device_map, f"LLM {llm_path}")
        device_map = staging_device if staging_device is not None else target
    dmap = ckpt.resolve_device_map(model, device_map, dtype)
    state = model.state_dict(keep_vars=True)
    llm_keys = {k for k in state if k.startswith("llm.")}
    own_keys = set(state) - llm_keys
    load_into_model(model, llm_path, dtype, dmap, expected_keys=llm_keys,
                    key_map=ckpt.prefix_key_map("llm."), label=f"LLM {llm_path}",
                    offload_folder=offload_folder, check_complete=False, dispatch=False,
                    progress=progress)

    label = f"agent {agent_path}"
    keys = [k for k in ckpt.checkpoint_keys(agent_path) if not ckpt.is_ignored_key(k)]
    if any(k.startswith(PEFT_PREFIX) for k in keys):
        view = ckpt.PeftLoraMergedView(ckpt.CheckpointView(agent_path), lora_scaling, model)
        n_lora = sum(recipe[0] == "merge" for recipe in view.plan.values())
        _warn(f"{label} is a peft LoRA training dump: merging {n_lora} LoRA pairs into the llm "
              f"weights (scaling {lora_scaling}), {len(view.dropped)} frozen copies dropped")
        llm_extra = {k for k in view.plan if k.startswith("llm.")}
        expected = own_keys | (llm_extra & llm_keys)
        ckpt.check_state_dict_keys({k: view.shape(k) for k in view}, {k: tuple(state[k].shape)
                                   for k in expected}, label)
        source: Any = [(str(agent_path), view)]
    else:
        llm_extra = {k for k in keys if k.startswith("llm.")}
        if llm_extra:
            _warn(f"{label} also carries {len(llm_extra)} llm.* tensors; they override the "
                  f"weights of {llm_path}")
        expected = own_keys | (llm_extra & llm_keys)
        source = agent_path
    load_into_model(model, source, dtype, dmap, expected_keys=expected, label=label,
                    offload_folder=offload_folder, check_complete=False, dispatch=False,
                    progress=progress)
    ckpt.assert_materialised(model, dmap, label)
    if quantization:
        quantize_llm(model.llm, quantization, device=target, compute_dtype=dtype)
        return model.to(target).eval()
    ckpt.dispatch_if_needed(model, dmap, offload_folder)
    return model.eval()


def _warn(message: str) -> None:
    logger.warning(message)
    warnings.warn(message, stacklevel=3)


def build_unet(unet: Mapping) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_config(dict(unet))


def load_unet(sdxl_dir: PathLike, *, dtype: torch.dtype, unet: Mapping | None = None,
              device_map: DeviceMap = None, progress: bool | None = None) -> nn.Module:
    """The SDXL-base UNet from a diffusers folder (``unet/`` with fp32 or ``.fp16`` weights)."""
    folder = Path(sdxl_dir) / "unet"
    with empty_init():
        model = build_unet(unet if unet is not None else diffusers_config_from_folder(folder))
    load_into_model(model, ckpt.find_weights(folder, prefer_fp16=dtype == torch.float16) or folder,
                    dtype, device_map, label=f"UNet {folder}", progress=progress)
    return model.eval()


def load_vae(sdxl_dir: PathLike, *, dtype: torch.dtype, vae: Mapping | None = None,
             device_map: DeviceMap = None, progress: bool | None = None) -> nn.Module:
    """The SDXL VAE from ``<sdxl>/vae`` (the de-tokenizer upcasts it to fp32 to decode)."""
    from diffusers import AutoencoderKL

    folder = Path(sdxl_dir) / "vae"
    with empty_init():
        model = AutoencoderKL.from_config(dict(vae if vae is not None else diffusers_config_from_folder(folder)))
    load_into_model(model, ckpt.find_weights(folder, prefer_fp16=dtype == torch.float16) or folder,
                    dtype, device_map, label=f"VAE {folder}", progress=progress)
    return model.eval()


def tile_vae(vae: nn.Module, image_size: int) -> nn.Module:
    """Tiled VAE decoding that takes effect at the model's own resolution.

    diffusers' ``enable_tiling`` only tiles inputs larger than the VAE's ``sample_size``, which
    for SDXL *is* 1024: at 1024x1024 it would change nothing. Tiles of half the image (with
    diffusers' 25 % overlap) cut the decoder's full-resolution fp32 activations about four times.
    """
    vae.enable_tiling()
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    tile = image_size // 2
    if tile >= 8 * scale:  # smaller tiles than that only add seams
        vae.tile_sample_min_size = tile
        vae.tile_latent_min_size = tile // scale
    return vae


def load_scheduler(sdxl_dir: PathLike | None = None, scheduler: Mapping | None = None):
    """``EulerDiscreteScheduler`` from ``<sdxl>/scheduler`` or a config dict."""
    from diffusers import EulerDiscreteScheduler

    if scheduler is None:
        scheduler = diffusers_config_from_folder(Path(sdxl_dir) / "scheduler")
    return EulerDiscreteScheduler.from_config(dict(scheduler))


def load_detokenizer(stage: int, weights: PathLike, *, detokenizer_resampler: Mapping,
                     dtype: torch.dtype, sdxl_dir: PathLike | None = None,
                     unet: Mapping | None = None, device_map: DeviceMap = None,
                     offload_folder: PathLike | None = None, progress: bool | None = None) -> nn.Module:
    """A de-tokenizer stage, each file checked against its own key set.

    * Stage 1 (``SDXLAdapter``): the SDXL-base UNet from ``sdxl_dir`` first, then the stage-1
      file *over* it. That file must hold exactly ``resampler.*`` and every UNet
      ``attn1``/``attn2`` ``to_k``/``to_v`` weight (``expected_stage1_keys``); those replace the
      base's, every other UNet weight stays SDXL-base.
    * Stage 2 (``SDXLAdapterWithLatentImage``, 8-channel ``conv_in``): the file is the whole
      adapter, nothing of SDXL-base is read (only its UNet config).
    """
    from .detokenizer import (SDXLAdapter, SDXLAdapterWithLatentImage, expected_stage1_keys,
                              expected_stage2_keys)
    from .detokenizer_resampler import ResamplerXLV2

    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if unet is None:
        if sdxl_dir is None:
            raise ValueError("load_detokenizer needs the UNet config: pass unet= or sdxl_dir=")
        unet = diffusers_config_from_folder(Path(sdxl_dir) / "unet")
    with empty_init():
        unet_module, resampler = build_unet(unet), ResamplerXLV2(**detokenizer_resampler)
        adapter = (SDXLAdapter if stage == 1 else SDXLAdapterWithLatentImage)(unet_module, resampler)
    dmap = ckpt.resolve_device_map(adapter, device_map, dtype)
    common = dict(offload_folder=offload_folder, progress=progress)
    if stage == 1:
        if sdxl_dir is None:
            raise ValueError("stage 1 needs the SDXL-base UNet weights: pass sdxl_dir=")
        folder = Path(sdxl_dir) / "unet"
        base = ckpt.find_weights(folder, prefer_fp16=dtype == torch.float16) or folder
        load_into_model(adapter, base, dtype, dmap,
                        expected_keys={f"unet.{k}" for k in unet_module.state_dict()},
                        key_map=ckpt.prefix_key_map("unet."), label=f"SDXL-base UNet {folder}",
                        check_complete=False, dispatch=False, **common)
        load_into_model(adapter, weights, dtype, dmap, expected_keys=expected_stage1_keys(adapter),
                        label=f"stage-1 de-tokenizer {weights}", **common)
    else:
        load_into_model(adapter, weights, dtype, dmap, expected_keys=expected_stage2_keys(adapter),
                        label=f"stage-2 de-tokenizer {weights}", **common)
    return adapter.eval()


# ------------------------------------------------------------------------------------------------
# The stack
# ------------------------------------------------------------------------------------------------
class SeedXStack:
    """Tokenizer, ViT and agent, plus both de-tokenizer stages and the VAE on first use.

    Build it with `from_config` (random weights, for tests and training from scratch) or
    `from_pretrained` (the release layout, or anything `save_pretrained` wrote).
    """

    def __init__(self, config: SeedXConfig, tokenizer, vit: nn.Module, agent: nn.Module, *,
                 detokenizer_factory: Callable[[int], nn.Module],
                 vae_factory: Callable[[], nn.Module], scheduler_factory: Callable[[], Any],
                 variant: str = "seed_x_i", paths: SeedXPaths | None = None,
                 offload: tuple[Any, Any] | None = None, vae_tiling: bool = False):
        self.config = config
        # (execution, storage): the de-tokenizer stages and the VAE wait on storage and come to
        # the execution device one stage at a time (`_bring_to_device`)
        self.offload = offload
        self.vae_tiling = vae_tiling
        self._on_device: nn.Module | None = None
        self.tokenizer = tokenizer
        self.vit = vit
        self.agent = agent
        self.variant = variant
        self.paths = paths
        self._detokenizer_factory = detokenizer_factory
        self._vae_factory = vae_factory
        self._scheduler_factory = scheduler_factory
        self._detokenizers: dict[int, nn.Module] = {}
        self._vae: nn.Module | None = None

    # --- lazily built parts ---------------------------------------------------------------------
    @property
    def vae(self) -> nn.Module:
        if self._vae is None:
            self._vae = self._vae_factory()
            if self.vae_tiling:
                tile_vae(self._vae, self.config.image_size)
        return self._vae

    def detokenizer(self, stage: int) -> nn.Module:
        """Stage 1 (``SDXLAdapter``, generation) or 2 (``SDXLAdapterWithLatentImage``, editing),
        built or loaded on first use, with the VAE, a fresh scheduler and the ViT attached."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        if stage not in self._detokenizers:
            adapter = self._detokenizer_factory(stage)
            adapter.init_pipe(vae=self.vae, scheduler=self._scheduler_factory(), vit=self.vit)
            self._detokenizers[stage] = adapter
        adapter = self._detokenizers[stage]
        if self.offload is not None:
            self._bring_to_device(adapter)
        return adapter

    def _bring_to_device(self, adapter: nn.Module) -> None:
        """Model offload, one stage at a time: the stage asked for (and the VAE, which it
        decodes with) moves to the execution device, the stage there before goes back to storage.

        Moved whole when asked for rather than by accelerate's per-forward hooks
        (``cpu_offload_with_hook``): the denoising loop places its latents and generator on
        ``unet.device`` before the UNet's first forward, so a forward hook would move it too late.
        The stage stays on the device after drawing, so consecutive pictures pay no transfer;
        the memory estimate counts one offloaded stage as resident for exactly that reason.
        """
        execution, storage = self.offload
        if self._on_device is not adapter:
            if self._on_device is not None:
                self._on_device.to(storage)
            adapter.to(execution)
            self._on_device = adapter
        if adapter.vae is not None:
            adapter.vae.to(execution)

    def replace_loader(self, component: str, loader: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        """Build ``component`` with ``loader`` from now on; returns the loader it replaces.

        ``"detokenizer"``: ``loader(stage)``; ``"vae"``: ``loader()``. A model whose release tree
        lacks a part (a Nano still in training) can so supply a stand-in, or load the part from
        elsewhere, and fall back to the returned loader for the parts it has. What the old loader
        already built is forgotten (de-tokenizers hold the VAE, so a new VAE drops them too).
        """
        if component == "detokenizer":
            previous, self._detokenizer_factory = self._detokenizer_factory, loader
        elif component == "vae":
            previous, self._vae_factory = self._vae_factory, loader
            self._vae = None
        else:
            raise ValueError(f"component must be 'detokenizer' or 'vae', got {component!r}")
        self._detokenizers.clear()
        self._on_device = None
        return previous

    @property
    def detokenizer_stage1(self) -> nn.Module:
        return self.detokenizer(1)

    @property
    def detokenizer_stage2(self) -> nn.Module:
        return self.detokenizer(2)

    @property
    def default_detokenizer_stage(self) -> int:
        """SEED-X-Edit decodes with stage 2, the others with stage 1 (maintainers, issue #2)."""
        return 2 if self.variant == "seed_x_edit" else 1

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SeedXConfig, tokenizer_dir: PathLike | None = None, seed: int = 0,
                    *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                    variant: str = "seed_x_i", quantization: Mapping[str, Any] | None = None,
                    offload: tuple[Any, Any] | None = None,
                    vae_tiling: bool = False) -> "SeedXStack":
        """Random weights of the sizes in ``config`` (the tiny test stack, a Nano before training).

        Each component draws from its own seed (``seed``, ``seed+1``, ...) inside a forked RNG, so
        the lazily built de-tokenizers come out the same whenever they are first used. The
        tokenizer defaults to the bundled tiny one (1330 tokens laid out like the real 32330).
        """
        from diffusers import AutoencoderKL

        from .detokenizer import SDXLAdapter, SDXLAdapterWithLatentImage
        from .detokenizer_resampler import ResamplerXLV2
        from .mllm import ContinuousLVLM
        from .qwen_vit import VisionTransformerWithAttnPool
        from .tokenizer import TINY_TOKENIZER_DIR, SeedXTokenizer

        device = device if device is not None else torch.get_default_device()
        tokenizer = SeedXTokenizer.from_pretrained(tokenizer_dir or TINY_TOKENIZER_DIR)
        if len(tokenizer) > config.llm["vocab_size"]:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but llm.vocab_size is "
                             f"{config.llm['vocab_size']}")

        def seeded(offset: int, build: Callable[[], nn.Module]) -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + offset)
                module = build()
            module = module.to(device=device)
            if any(p.dtype != dtype for p in module.parameters()):
                module = module.to(dtype=dtype)
            return module.eval()

        vit = seeded(0, lambda: VisionTransformerWithAttnPool(**config.vit))
        agent = seeded(1, lambda: ContinuousLVLM.from_config(config))
        if quantization:
            quantize_llm(agent.llm, quantization, device=device, compute_dtype=dtype)

        def detokenizer(stage: int) -> nn.Module:
            adapter_cls = SDXLAdapter if stage == 1 else SDXLAdapterWithLatentImage
            return seeded(1 + stage, lambda: adapter_cls(build_unet(config.unet),
                                                         ResamplerXLV2(**config.detokenizer_resampler)))

        return cls(config, tokenizer, vit, agent, detokenizer_factory=detokenizer,
                   vae_factory=lambda: seeded(4, lambda: AutoencoderKL.from_config(dict(config.vae))),
                   scheduler_factory=lambda: load_scheduler(scheduler=config.scheduler),
                   variant=variant, offload=offload, vae_tiling=vae_tiling)

    @classmethod
    def from_pretrained(cls, root_or_paths: PathLike | SeedXPaths | None = None,
                        variant: str = "seed_x_i", *, dtype: torch.dtype | str | None = None,
                        device_map: DeviceMap = None, config: SeedXConfig | None = None,
                        offload_folder: PathLike | None = None, lora_scaling: float = 1.0,
                        attn_implementation: str | None = None, progress: bool | None = None,
                        quantization: Mapping[str, Any] | None = None, staging_device: Any = None,
                        offload: tuple[Any, Any] | None = None, vae_tiling: bool = False,
                        **path_overrides: PathLike) -> "SeedXStack":
        """Load a variant (``seed_x``, ``seed_x_i``, ``seed_x_edit``) from the release layout.

        ``root_or_paths``: the folder holding the release (see `checkpoint.SeedXPaths`), or a
        resolved ``SeedXPaths``; ``path_overrides`` (``llm=``, ``agent=``, ``vit=``, ``sdxl=``,
        ``tokenizer=``, ``detokenizer_stage1=``, ``detokenizer_stage2=``) replace single paths.
        ``dtype``: None -> bfloat16 with a log line (`resolve_dtype`). ``device_map``: one device
        for all, ``"auto"``, or a dict by component / module path (`component_device_map`);
        None = torch's default device. ``config``: skip deriving sizes from the files.
        ``quantization`` / ``staging_device``: the LLM's decoder linear layers quantized
        (`load_agent`). ``offload=(execution, storage)``: the de-tokenizer stages and the VAE are
        kept on storage and moved to execution one stage at a time; ``vae_tiling``: `tile_vae`.

        Tokenizer, ViT and agent load now; the de-tokenizer stages and the VAE on first use
        (`detokenizer`), each file checked against its own key set.
        """
        if isinstance(root_or_paths, SeedXPaths):
            paths = root_or_paths
            if path_overrides:
                raise TypeError("pass path overrides either in SeedXPaths or as keywords, not both")
            variant = paths.variant
        else:
            paths = SeedXPaths.resolve(root_or_paths, variant, **path_overrides)
        paths.require("tokenizer", "vit", "llm", "agent")
        detok_needs = ("sdxl", "detokenizer_stage1") if variant != "seed_x_edit" else ("detokenizer_stage2",)
        if any(getattr(paths, c) is None for c in detok_needs):
            logger.warning("de-tokenizer of %s not found (%s); image output will fail on first use",
                           variant, ", ".join(c for c in detok_needs if getattr(paths, c) is None))
        config = config if config is not None else config_from_paths(paths)
        dtype = resolve_dtype(dtype)
        common = dict(dtype=dtype, offload_folder=offload_folder, progress=progress)

        from .tokenizer import SeedXTokenizer

        tokenizer = SeedXTokenizer.from_pretrained(paths.tokenizer)
        vit = load_vit(paths.vit, vit=config.vit, device_map=component_device_map(device_map, "vit"), **common)
        agent = load_agent(paths.llm, paths.agent, llm=config.llm,
                           input_resampler=config.input_resampler,
                           output_resampler=config.output_resampler, agent=config.agent,
                           device_map=component_device_map(device_map, "agent"),
                           lora_scaling=lora_scaling, attn_implementation=attn_implementation,
                           quantization=quantization, staging_device=staging_device, **common)

        def detokenizer(stage: int) -> nn.Module:
            weights = "detokenizer_stage1" if stage == 1 else "detokenizer_stage2"
            paths.require(weights, *(("sdxl",) if stage == 1 else ()))
            return load_detokenizer(stage, getattr(paths, weights), sdxl_dir=paths.sdxl,
                                    unet=config.unet, detokenizer_resampler=config.detokenizer_resampler,
                                    device_map=component_device_map(device_map, "detokenizer"), **common)

        def vae() -> nn.Module:
            paths.require("sdxl")
            return load_vae(paths.sdxl, vae=config.vae, dtype=dtype,
                            device_map=component_device_map(device_map, "vae"), progress=progress)

        def scheduler():
            has_file = paths.sdxl is not None and _has_diffusers_config(paths.sdxl / "scheduler")
            return load_scheduler(paths.sdxl if has_file else None, None if has_file else config.scheduler)

        return cls(config, tokenizer, vit, agent, detokenizer_factory=detokenizer,
                   vae_factory=vae, scheduler_factory=scheduler, variant=variant, paths=paths,
                   offload=offload, vae_tiling=vae_tiling)

    # --- saving ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: PathLike, *, variant: str | None = None,
                        max_shard_size: int | str = ckpt.DEFAULT_MAX_SHARD_SIZE,
                        dtype: torch.dtype | None = None, stages: tuple[int, ...] = (1, 2)) -> Path:
        """Write the release layout with safetensors, readable by `from_pretrained`.

        ``seedx_config.json`` (all sizes), the tokenizer folder, ``<variant>/llm`` (HF
        ``config.json`` + weights), ``<variant>/agent`` (resamplers + ``patch_pos_embed`` only),
        ``QwenViT/qwen_vit_G.safetensors``, and for each stage in ``stages`` (built now if not
        yet): ``stable-diffusion-xl-base-1.0/{unet,vae,scheduler}`` (the stage-1 UNet serves as
        the base, so base + stage-1 overlay reproduce it exactly) and
        ``seed_detokenizer/{first,second}_stage`` with each stage's own key set.
        """
        from transformers import LlamaConfig

        from .detokenizer import expected_stage1_keys, expected_stage2_keys

        root = Path(directory)
        variant = variant or self.variant
        root.mkdir(parents=True, exist_ok=True)
        self.config.save(root / CONFIG_FILE)
        self.tokenizer.save_pretrained(root / ckpt.TOKENIZER_DIRNAME)
        save = dict(max_shard_size=max_shard_size, dtype=dtype, progress=False)

        state = self.agent.state_dict()
        llm_dir = root / variant / "llm"
        llm_dir.mkdir(parents=True, exist_ok=True)
        LlamaConfig(**self.config.llm).save_pretrained(llm_dir)
        tied = self.config.llm.get("tie_word_embeddings", False)
        ckpt.save_state_dict({k[len("llm."):]: v for k, v in state.items() if k.startswith("llm.")
                              and not (tied and k == "llm.lm_head.weight")}, llm_dir, **save)
        ckpt.save_state_dict({k: v for k, v in state.items() if not k.startswith("llm.")},
                             root / variant / "agent", **save)
        ckpt.save_state_dict(self.vit.state_dict(), root / ckpt.QWEN_VIT_DIRNAME,
                             base_name=ckpt.QWEN_VIT_STEM, **save)

        if stages:
            sdxl = root / ckpt.SDXL_DIRNAME
            base_unet = self.detokenizer(1).unet if 1 in stages else None
            if base_unet is not None:
                base_unet.save_config(sdxl / "unet")
                ckpt.save_state_dict(base_unet.state_dict(), sdxl / "unet",
                                     base_name="diffusion_pytorch_model", **save)
            else:  # stage 2 alone: only the 4-channel UNet config is needed
                (sdxl / "unet").mkdir(parents=True, exist_ok=True)
                write_json(sdxl / "unet" / "config.json", self.config.unet)
            self.vae.save_config(sdxl / "vae")
            ckpt.save_state_dict(self.vae.state_dict(), sdxl / "vae",
                                 base_name="diffusion_pytorch_model", **save)
            self.detokenizer(stages[0]).scheduler.save_config(sdxl / "scheduler")
        for stage in stages:
            adapter = self.detokenizer(stage)
            keys = expected_stage1_keys(adapter) if stage == 1 else expected_stage2_keys(adapter)
            adapter_state = adapter.state_dict()
            folder = root / ckpt.DETOKENIZER_DIRNAMES[0] / ("first_stage" if stage == 1 else "second_stage")
            ckpt.save_state_dict({k: adapter_state[k] for k in sorted(keys)}, folder, **save)
        return root
