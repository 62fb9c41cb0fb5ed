"""The runtime: one SEED-X stack on its devices, shared by many sessions.

It owns what is expensive and shareable: the tokenizer, the ViT (with a feature cache keyed by
image content), one agent (LLM + resamplers) per resident variant, and the de-tokenizer stages,
which load lazily on the first image that needs them. Sessions own what is per-conversation:
history and KV caches.

Model access is serialized per device with a first-come-first-served lock, so sessions on
several threads queue instead of interleaving kernels (and instead of racing on a KV cache).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .placement import Placement
from .variants import (ALL_GRIDS, AdapterWeights, PromptTemplate, ResidencyPolicy, Variant,
                       VariantRegistry)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from core_models.stack import SeedXStack

    from .session import Session
    from .skills import SkillHost
    from .store import SessionStore

logger = logging.getLogger(__name__)

TINY_PRESET = "tiny"
UNTRAINED_NOTICE = ("the 'tiny' preset is an UNTRAINED random-weight SEED-X stack: its text and "
                    "images are noise; it exists to exercise the real code paths offline")
ADAPTERS_DIRNAME = "adapters"
BASE_ALIAS = "base"  # with adapters: the shared base LLM, every adapter disabled
# How known adapter names run, unless the model folder says otherwise (``adapters/<name>`` plus
# an optional ``variants`` entry in ``nano_manifest.json``): SEED-X-Edit's single-turn,
# single-image editing on the stage-2 de-tokenizer, and try-on's person as the stage-2 condition.
ADAPTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "seed_x_edit": dict(description="editing adapter: single-turn, one image, stage-2 de-tokenizer",
                        detokenizer_stage=2, single_image_edit=True,
                        template=PromptTemplate(multi_turn=False)),
    "tryon": dict(description="try-on adapter: person + garment in, the person (the stage-2 "
                              "condition) dressed out", detokenizer_stage=2),
}


class FifoLock:
    """A lock granted in arrival order (``threading.Lock`` makes no fairness promise)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def __enter__(self) -> "FifoLock":
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


@dataclass(frozen=True)
class EncodedImage:
    """ViT features of one image's any-res views, ready to splice into a prompt."""

    features: "torch.Tensor"        # (V, L, vit_dim)
    patch_positions: "torch.Tensor"  # (V, 2)
    grid: tuple[int, int]
    num_views: int


class Runtime:
    """Hosts a SEED-X stack. Build it with ``Runtime.from_pretrained``."""

    def __init__(self, stack: "SeedXStack", *, name: str, placement: Placement,
                 variants: VariantRegistry | None = None, residency: ResidencyPolicy | None = None,
                 agent_loader: Callable[[Variant], Any] | None = None, untrained: bool = False,
                 vit_cache_size: int = 256, skill_host: "SkillHost | None" = None):
        self.stack = stack
        self.name = name
        self.placement = placement
        self.variants = variants or VariantRegistry()
        self.residency = residency or ResidencyPolicy()
        self.untrained = untrained
        self._agent_loader = agent_loader
        self._agents: OrderedDict[str, Any] = OrderedDict({stack.variant: stack.agent})
        self._vit_cache: OrderedDict[tuple, EncodedImage] = OrderedDict()
        self._vit_cache_size = vit_cache_size
        self._locks: dict[str, FifoLock] = {}
        self._locks_guard = threading.Lock()
        self._skill_host = skill_host
        self.adapters: AdapterHost | None = None   # peft adapters on the base LLM (adapters/)
        self.untrained_components: tuple[str, ...] = ()  # set by presets with untrained parts
        self.notice: str | None = None            # what the CLI banner says about this model
        self.default_steps: int | None = None      # overrides default_num_inference_steps
        self.weights_fingerprint = _fingerprint(stack)

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_preset: str | Path = TINY_PRESET, *, dtype: Any = None,
                        placement: Placement | str | None = None, variant: str = "seed_x_i",
                        variants: VariantRegistry | None = None,
                        residency: ResidencyPolicy | None = None, progress: bool | None = None,
                        load_plugins: bool = True) -> "Runtime":
        """Load the release layout at ``path_or_preset``, or build a preset (`seedx_agent.presets`:
        ``"tiny"``, ``"nano"``).

        ``placement`` is a `Placement` (or its string form: "cpu", "cuda:0", "split:cuda:0,cuda:1",
        "offload"); ``dtype`` overrides the placement's dtype. Variants registered by plugins
        (``register_variants``) are added to ``variants``. A folder with ``adapters/<name>/``
        (peft LoRA folders) gets one variant per adapter on the base LLM (`AdapterHost`).
        """
        from core_models.config import SeedXConfig
        from core_models.stack import SeedXStack

        from . import presets

        if str(path_or_preset) in presets.PRESETS and str(path_or_preset) != TINY_PRESET:
            return presets.build(str(path_or_preset), dtype=dtype, placement=placement,
                                 variant=variant, variants=variants, residency=residency,
                                 progress=progress, load_plugins=load_plugins)
        placement = Placement.parse(placement if placement is not None else "cpu")
        torch_dtype = _resolve_dtype(dtype) if dtype is not None else placement.torch_dtype()
        variants = variants or VariantRegistry()
        if load_plugins:
            from .plugins import pm
            pm.hook.register_variants(register=variants.register)
        if str(path_or_preset) == TINY_PRESET:
            logger.warning(UNTRAINED_NOTICE)
            stack = SeedXStack.from_config(SeedXConfig.tiny(), seed=0, dtype=torch_dtype,
                                           device=placement.device_for("llm"), variant=variant)
            # Every built-in variant is the same untrained network in this preset.
            return cls(stack, name=TINY_PRESET, placement=placement, variants=variants,
                       residency=residency, agent_loader=lambda v: stack.agent, untrained=True)
        root = Path(path_or_preset)
        if not root.exists():
            raise FileNotFoundError(f"no model folder at {root} (and it is not a preset: "
                                    f"known presets: {', '.join(map(repr, presets.PRESETS))})")
        device_map = _device_map(placement, root, variant, torch_dtype)
        stack = SeedXStack.from_pretrained(root, variant=variant, dtype=torch_dtype,
                                           device_map=device_map, progress=progress,
                                           offload_folder=placement.offload_folder)

        def load_agent(v: Variant) -> Any:
            from core_models.checkpoint import SeedXPaths
            from core_models.stack import component_device_map, load_agent as _load

            if not isinstance(v.llm_path, str):
                raise NotImplementedError(f"adapter variant {v.name!r}: its base "
                                          f"{v.llm_path.base!r} is not the loaded base LLM")
            from core_models.checkpoint import VARIANTS

            if v.name in VARIANTS and v.llm is None and v.agent is None:
                paths = SeedXPaths.resolve(root, v.name)
            else:  # a plugin's dense variant: its own folders under the same root
                paths = SeedXPaths.resolve(root, stack.variant, llm=root / v.llm_path,
                                           agent=root / v.agent_path)
            cfg = stack.config
            return _load(paths.llm, paths.agent, llm=cfg.llm, input_resampler=cfg.input_resampler,
                         output_resampler=cfg.output_resampler, agent=cfg.agent, dtype=torch_dtype,
                         device_map=component_device_map(device_map, "agent"),
                         progress=progress)

        runtime = cls(stack, name=str(root), placement=placement, variants=variants,
                      residency=residency, agent_loader=load_agent)
        runtime.attach_adapters(root)
        return runtime

    def attach_adapters(self, root: str | Path) -> list[str]:
        """Register ``<root>/adapters/<name>/`` (peft LoRA folders) as variants on the base LLM.

        Each becomes ``Variant(name, llm=AdapterWeights(base=<base>, path="adapters/<name>"))``,
        replacing a same-named variant (a built-in ``seed_x_edit`` or ``seed_x_i``); settings
        come from `ADAPTER_DEFAULTS` and an optional ``variants`` mapping in
        ``nano_manifest.json``. All adapters are loaded onto the one base LLM now; ``"base"``
        names the base with every adapter disabled. No ``adapters/`` folder: nothing changes.
        """
        folder = Path(root) / ADAPTERS_DIRNAME
        names = sorted(p.name for p in folder.iterdir()
                       if (p / "adapter_config.json").is_file()) if folder.is_dir() else []
        if not names:
            return []
        settings = _manifest_variants(Path(root))
        base = self.stack.variant
        self.adapters = AdapterHost(self.stack.agent, base, Path(root))
        grids = tuple(self.config.resolution_grids) or ALL_GRIDS
        self.variants.register(Variant(name=BASE_ALIAS, description=f"the base LLM of the "
                                       f"adapters ({base}/), every adapter disabled",
                                       llm=None, resolution_grids=grids), replace=True)
        for name in names:
            spec = dict(description=f"LoRA adapter {name} on {base}", resolution_grids=grids)
            spec.update(ADAPTER_DEFAULTS.get(name, {}))
            spec.update(settings.get(name, {}))
            variant = Variant.model_validate(dict(
                spec, name=name, llm=AdapterWeights(base=base, path=f"{ADAPTERS_DIRNAME}/{name}")))
            self.variants.register(variant, replace=True)
            self.adapters.load(name, Path(root) / ADAPTERS_DIRNAME / name)
        self.adapters.activate(None)
        self.weights_fingerprint = _fingerprint(self.stack)
        return names

    # --- sessions -----------------------------------------------------------------------------
    def open_session(self, *, store: "SessionStore | None" = None, session_id: str | None = None,
                     variant: str | None = None, default_skill: str | None = None,
                     title: str = "", **options: Any) -> "Session":
        """A new session, or (``session_id``) a stored one resumed from ``store``."""
        from .session import Session

        return Session(self, store=store, session_id=session_id, variant=variant or self.stack.variant,
                       default_skill=default_skill, title=title, **options)

    @property
    def skill_host(self) -> "SkillHost":
        if self._skill_host is None:
            from .plugins import pm
            from .skills import SkillHost
            self._skill_host = SkillHost(pm)
        return self._skill_host

    # --- shared model access --------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.stack.tokenizer

    @property
    def config(self):
        return self.stack.config

    def lock(self, component: str = "llm") -> FifoLock:
        """The FIFO lock of the device ``component`` runs on; hold it while using the model."""
        device = self.placement.device_for(component)
        with self._locks_guard:
            return self._locks.setdefault(device, FifoLock())

    def agent(self, variant: str) -> Any:
        """The agent (LLM + resamplers) of ``variant``, loading it and evicting per the policy.

        Adapter variants (and the base they sit on) share one agent: this activates the
        variant's adapter (or disables all of them for the base) and returns that agent. Call it
        under ``lock("llm")`` and use the agent before releasing the lock.
        """
        spec = self.variants.get(variant)
        host = self.adapters
        if host is not None:
            adapter = host.adapter_for(spec)
            if adapter is not False:
                host.activate(adapter)
                return host.agent
        if spec.name in self._agents:
            self._agents.move_to_end(spec.name)
            return self._agents[spec.name]
        if self._agent_loader is None:
            raise RuntimeError(f"variant {variant!r} is not loaded and this runtime cannot load more")
        for name in self.residency.evictions(list(self._agents), spec.name):
            logger.info("unloading variant %s (residency policy: %s)", name, self.residency)
            del self._agents[name]
        self._agents[spec.name] = self._agent_loader(spec)
        return self._agents[spec.name]

    def active_adapter(self, agent: Any) -> str | None:
        """The adapter active on ``agent`` now (None: no adapter, or not the adapters' base)."""
        host = self.adapters
        return host.active if host is not None and host.agent is agent else None

    def new_generation(self, agent: Any):
        """A fresh decoding state (KV cache) on ``agent``; `seedx_agent.testing` swaps this out
        to replay recorded token streams instead of running the LLM."""
        from core_models.generation import GenerationSession

        return GenerationSession(agent, self.tokenizer)

    @property
    def resident_variants(self) -> list[str]:
        return list(self._agents)

    def encode_image(self, image: "Image.Image", image_id: str, grids: tuple[str, ...]) -> EncodedImage:
        """Any-res views of ``image`` through the ViT, cached by content, grids, size and encoder."""
        import torch

        from core_models.any_res import process_anyres_image

        vit = self.stack.vit
        param = next(vit.parameters())
        key = (image_id, tuple(grids), self.config.base_resolution, id(vit), str(param.dtype))
        cached = self._vit_cache.get(key)
        if cached is not None:
            self._vit_cache.move_to_end(key)
            return cached
        views = process_anyres_image(image, list(grids), self.config.base_resolution)
        with torch.no_grad():
            features = vit(views.pixel_values.to(device=param.device, dtype=param.dtype))
        encoded = EncodedImage(features=features, patch_positions=views.patch_positions,
                               grid=tuple(views.grid), num_views=views.num_views)
        self._vit_cache[key] = encoded
        while len(self._vit_cache) > self._vit_cache_size:
            self._vit_cache.popitem(last=False)
        return encoded

    @property
    def default_num_inference_steps(self) -> int:
        """50 as in the official scripts; 4 for the untrained preset, whose images are noise; a
        preset may set ``default_steps`` (the Nano: the steps it was evaluated with)."""
        if self.default_steps is not None:
            return self.default_steps
        return 4 if self.untrained else 50

    def render(self, features: "torch.Tensor", *, stage: int, seed: int, num_inference_steps: int,
               guidance_scale: float, image_guidance_scale: float | None = None,
               source: "Image.Image | None" = None,
               on_step: Callable[[int, int], None] | None = None, interrupt: Any = None) -> "Image.Image":
        """Features ``(Q, vit_dim)`` -> one PIL image with de-tokenizer ``stage`` (1 or 2).

        Stage 2 conditions on ``source`` (SEED-X-Edit). The stage loads on first use. Raises
        ``core_models.detokenizer.DenoisingInterrupted`` when ``interrupt`` fires.
        """
        with self.lock("detokenizer"):
            adapter = self.stack.detokenizer(stage)
            size = self.config.image_size
            param = next(adapter.parameters())

            def callback(pipe, step_index, timestep, callback_kwargs):
                if on_step is not None:
                    on_step(step_index + 1, num_inference_steps)
                return callback_kwargs

            kwargs: dict[str, Any] = dict(seed=seed, height=size, width=size,
                                          num_inference_steps=num_inference_steps,
                                          guidance_scale=guidance_scale,
                                          callback_on_step_end=callback, interrupt=interrupt)
            if stage == 2:
                kwargs.update(latent_image=source, image_guidance_scale=image_guidance_scale)
            images = adapter.generate(image_embeds=features.unsqueeze(0).to(param.device, param.dtype),
                                      **kwargs)
            return images[0]

    @property
    def vit_cache_size(self) -> int:
        return len(self._vit_cache)

    def describe(self) -> dict[str, Any]:
        about = {"model": self.name, "untrained": self.untrained,
                 "placement": self.placement.describe(), "variants": self.variants.names(),
                 "resident": self.resident_variants, "weights_fingerprint": self.weights_fingerprint}
        if self.untrained_components:
            about["untrained_components"] = list(self.untrained_components)
        if self.adapters is not None:
            about["adapters"] = sorted(self.adapters.loaded)
        return about


class AdapterHost:
    """peft LoRA adapters on one base agent, switched per turn.

    ``PeftModel.from_pretrained`` / ``load_adapter`` inject the LoRA layers *into* the base
    agent's LLM modules in place, so ``agent.llm`` stays the plain HF Llama every code path uses
    (``get_decoder``, ``get_input_embeddings``); the peft wrapper is kept here only to switch:
    ``activate(name)`` sets that adapter and enables the LoRA layers, ``activate(None)``
    disables them (the base). Switching is a flag flip, no weights move. The active adapter is
    runtime-wide state: set it and use the agent under the same ``lock("llm")``.
    """

    def __init__(self, agent: Any, base_variant: str, root: Path):
        self.agent = agent
        self.base_variant = base_variant
        self.root = root
        self.loaded: dict[str, str] = {}   # adapter name -> folder
        self.active: str | None = None
        self._peft: Any = None

    def load(self, name: str, path: str | Path) -> None:
        import warnings

        from peft import PeftModel

        with warnings.catch_warnings():  # peft asks transformers a deprecated question
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.agent.llm, str(path),
                                                       adapter_name=name, is_trainable=False)
            else:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        self.loaded[name] = str(path)
        self.activate(self.active)  # loading never changes which adapter runs
        self.agent.eval()

    def adapter_for(self, spec: Variant) -> str | None | bool:
        """The adapter ``spec`` runs with: a name, None (the base, adapters off) or False (not a
        variant of this base). An adapter variant registered by a plugin (any folder under the
        model root) is loaded on first use."""
        if isinstance(spec.llm, AdapterWeights):
            if spec.llm.base not in (self.base_variant, BASE_ALIAS):
                return False
            if spec.name not in self.loaded:
                self.load(spec.name, self.root / spec.llm.path)
            return spec.name
        if spec.name in (self.base_variant, BASE_ALIAS):
            return None
        return False

    def activate(self, name: str | None) -> None:
        if self._peft is None:
            return
        lora = self._peft.base_model
        if name is None:
            lora.disable_adapter_layers()
        else:
            try:
                lora.set_adapter(name, inference_mode=True)
            except TypeError:  # peft < 0.17
                lora.set_adapter(name)
            lora.enable_adapter_layers()
        self.active = name


def _manifest_variants(root: Path) -> dict[str, dict[str, Any]]:
    """Per-adapter variant settings from ``nano_manifest.json``'s optional ``variants`` mapping
    (``{"tryon": {"detokenizer_stage": 2, "resolution_grids": ["1x1"]}}``)."""
    import json

    path = root / "nano_manifest.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    variants = data.get("variants") if isinstance(data, dict) else None
    return {k: dict(v) for k, v in variants.items() if isinstance(v, dict)} if isinstance(variants, dict) else {}


def _resolve_dtype(dtype: Any):
    import torch
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def _device_map(placement: Placement, root: Path, variant: str, dtype: Any) -> Any:
    """The stack-level device map for ``placement``.

    One device: that device. Split or offload: the ViT, the resamplers and the de-tokenizer on
    the primary device, and the LLM's decoder layers where ``placement.llm_device_map`` puts them
    (accelerate's plan on the meta-built LLM; layers are never split, overflow goes to CPU, then
    disk under ``offload``).
    """
    if placement.kind in ("cpu", "gpu"):
        return placement.primary_device
    from accelerate import init_empty_weights

    from core_models.checkpoint import SeedXPaths
    from core_models.stack import build_agent, config_from_paths

    cfg = config_from_paths(SeedXPaths.resolve(root, variant))
    with init_empty_weights():
        agent = build_agent(cfg.llm, cfg.input_resampler, cfg.output_resampler, cfg.agent)
    primary = placement.primary_device
    device_map: dict[str, Any] = {"": primary, "vit": primary, "detokenizer": primary,
                                  "vae": primary, "agent": primary}
    llm_map = placement.llm_device_map(agent.llm.to(dtype))
    if isinstance(llm_map, str):
        llm_map = {"": llm_map}
    for name, device in llm_map.items():
        device_map["agent.llm" + (f".{name}" if name else "")] = device
    return device_map


def _fingerprint(stack: "SeedXStack") -> str:
    """A cheap identity of the weights: config + a few sampled parameter values, not a full hash
    (hashing 36 GB on every start would be absurd). Enough to tell models apart in provenance."""
    import torch

    h = hashlib.sha256(repr(sorted(stack.config.to_dict().items())).encode())
    with torch.no_grad():
        for module in (stack.vit, stack.agent):
            for name, p in list(module.named_parameters())[:: max(1, len(list(module.parameters())) // 8)]:
                if p.device.type == "meta":
                    continue
                h.update(name.encode())
                h.update(p.detach().flatten()[:16].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
