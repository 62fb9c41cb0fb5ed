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

from .adapters import BASE_ALIAS, AdapterHost, adapter_names, adapter_variant
from .placement import Placement
from .turn_options import RenderDefaults, TurnOptions
from .variants import ALL_GRIDS, ResidencyPolicy, Variant, VariantRegistry

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from core_models.stack import SeedXStack

    from .session import Session
    from .skill_host import SkillHost
    from .store import SessionStore

logger = logging.getLogger(__name__)

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
                 vit_cache_size: int = 256, skill_host: "SkillHost | None" = None,
                 render_defaults: RenderDefaults | None = None):
        self.stack = stack
        self.name = name
        self.placement = placement
        self.variants = variants if variants is not None else VariantRegistry()
        self.residency = residency or ResidencyPolicy()
        self.untrained = untrained
        self.render_defaults = render_defaults or RenderDefaults()  # a preset may set its own
        self._agent_loader = agent_loader
        self._agents: OrderedDict[str, Any] = OrderedDict({stack.variant: stack.agent})
        self._vit_cache: OrderedDict[tuple, EncodedImage] = OrderedDict()
        self._vit_cache_size = vit_cache_size
        # the cache is read and written by every session's thread, and the ViT may sit on a
        # device whose lock is not the one the caller holds (split placements)
        self._vit_cache_guard = threading.Lock()
        self._locks: dict[str, FifoLock] = {}
        self._locks_guard = threading.Lock()
        self._skill_host = skill_host
        self.adapters: AdapterHost | None = None   # peft adapters on the base LLM (adapters/)
        self.untrained_components: tuple[str, ...] = ()  # set by presets with untrained parts
        self.notice: str | None = None            # what the CLI banner says about this model
        self._weights_fingerprint: str | None = None
        # what a session runs without asking: the loaded variant, or the one asked for when it
        # is an adapter on the loaded base (a release tree after extract-adapters)
        self.default_variant: str = stack.variant

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, config: Any = None, dtype: Any = None,
                        placement: Placement | str | None = None, variant: str = "seed_x_i",
                        variants: VariantRegistry | None = None,
                        residency: ResidencyPolicy | None = None, progress: bool | None = None,
                        load_plugins: bool = True) -> "Runtime":
        """Load the model folder at ``path`` (the release layout; names such as ``"tiny"``
        resolve in `seedx_agent.from_pretrained`, never here).

        ``config`` (a `SeedXConfig`) gives the sizes of a custom-size tree that has no
        ``seedx_config.json``. ``placement`` is a `Placement` (or its string form: "cpu",
        "cuda:0", "split:cuda:0,cuda:1", "offload"); ``dtype`` overrides the placement's dtype.
        Variants come from the ``register_variants`` hook (the released three are a default
        plugin); ``load_plugins=False`` uses just the released three. A folder with
        ``adapters/<name>/`` (peft LoRA folders) gets one variant per adapter on the base LLM.
        """
        from core_models.stack import SeedXStack

        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no model folder at {root} (for a named model such as "
                                    "'tiny' or 'nano' use seedx_agent.from_pretrained)")
        placement = Placement.parse(placement if placement is not None else "cpu")
        torch_dtype = _torch_dtype(dtype, placement)
        variants = _variant_registry(variants, load_plugins)
        # adapters extracted from the release (`seedx convert extract-adapters`) ride on the
        # base they were computed against: load that LLM, never the dense variant they replace
        from .adapters import declared_base
        stack_variant = declared_base(root, adapter_names(root)) or variant
        device_map = _device_map(placement, root, stack_variant, torch_dtype, config)
        stack = SeedXStack.from_pretrained(root, variant=stack_variant, dtype=torch_dtype,
                                           device_map=device_map, progress=progress, config=config,
                                           offload_folder=placement.offload_folder,
                                           **_stack_options(placement))

        def load_agent(v: Variant) -> Any:
            from core_models.checkpoint import VARIANTS, SeedXPaths
            from core_models.stack import component_device_map, load_agent as _load

            if not isinstance(v.llm_path, str):
                raise NotImplementedError(f"adapter variant {v.name!r}: its base "
                                          f"{v.llm_path.base!r} is not the loaded base LLM")
            if v.name in VARIANTS and v.llm is None and v.agent is None:
                paths = SeedXPaths.resolve(root, v.name)
            else:  # a plugin's dense variant: its own folders under the same root
                paths = SeedXPaths.resolve(root, stack.variant, llm=root / v.llm_path,
                                           agent=root / v.agent_path)
            cfg = stack.config
            return _load(paths.llm, paths.agent, llm=cfg.llm, input_resampler=cfg.input_resampler,
                         output_resampler=cfg.output_resampler, agent=cfg.agent, dtype=torch_dtype,
                         device_map=component_device_map(device_map, "agent"),
                         progress=progress, quantization=placement.quantization,
                         staging_device=placement.staging_device if placement.quantization
                         else None)

        runtime = cls(stack, name=str(root), placement=placement, variants=variants,
                      residency=residency, agent_loader=load_agent)
        runtime.attach_adapters(root)
        if variant in runtime.variants:  # e.g. seed_x_i as an adapter on a seed_x base
            runtime.default_variant = variant
        return runtime

    @classmethod
    def from_config(cls, config: Any, *, name: str, tokenizer_dir: str | Path | None = None,
                    seed: int = 0, dtype: Any = None, placement: Placement | str | None = None,
                    variant: str = "seed_x_i", variants: VariantRegistry | None = None,
                    residency: ResidencyPolicy | None = None, progress: bool | None = None,
                    load_plugins: bool = True) -> "Runtime":
        """An UNTRAINED runtime: random weights of the sizes in ``config`` (`SeedXStack.from_config`).

        What the ``tiny`` preset is, and a Nano before its LLM is trained. Every variant runs the
        same network (there is only one set of weights), and ``runtime.untrained`` says so.
        """
        from core_models.stack import SeedXStack

        placement = Placement.parse(placement if placement is not None else "cpu")
        stack = SeedXStack.from_config(config, tokenizer_dir=tokenizer_dir, seed=seed,
                                       dtype=_torch_dtype(dtype, placement),
                                       device=placement.device_for("llm"), variant=variant,
                                       quantization=placement.quantization,
                                       offload=_stack_options(placement)["offload"],
                                       vae_tiling=placement.vae_tiling)
        return cls(stack, name=name, placement=placement,
                   variants=_variant_registry(variants, load_plugins), residency=residency,
                   agent_loader=lambda v: stack.agent, untrained=True)

    def attach_adapters(self, root: str | Path) -> list[str]:
        """Register ``<root>/adapters/<name>/`` (peft LoRA folders) as variants on the base LLM.

        Each becomes a variant with ``llm=AdapterWeights(base=<base>, path="adapters/<name>")``
        (`seedx_agent.adapters.adapter_variant`), replacing a same-named one (a released
        ``seed_x_edit`` or ``seed_x_i``). All adapters are loaded onto the one base LLM now;
        ``"base"`` names the base with every adapter disabled. No ``adapters/``: nothing changes.

        Adapters extracted from a release (``seedx convert extract-adapters``) name the base they
        were computed against; when the stack was loaded on another variant (whose dense LLM an
        adapter would otherwise be added onto twice), that base's agent is loaded and hosts
        them, and the dense one is dropped. Loading with ``variant=<base>`` avoids reading the
        dense variant at all.
        """
        from .adapters import declared_base

        names = adapter_names(Path(root))
        if not names:
            return []
        base = self.stack.variant
        wanted = declared_base(Path(root), names)
        if wanted is not None and wanted != base:
            logger.warning("adapters under %s were extracted against %s, but %s was loaded: "
                           "loading %s to host them (pass variant=%r to skip the dense load)",
                           root, wanted, base, wanted, wanted)
            if self._agent_loader is None:
                raise RuntimeError(f"adapters need base {wanted!r} and this runtime cannot load it")
            self.stack.agent = self._agent_loader(self.variants.get(wanted))
            self._agents = OrderedDict({wanted: self.stack.agent})
            base = wanted
        self.adapters = AdapterHost(self.stack.agent, base, Path(root))
        grids = tuple(self.config.resolution_grids) or ALL_GRIDS
        self.variants.register(Variant(name=BASE_ALIAS, description=f"the base LLM of the "
                                       f"adapters ({base}/), every adapter disabled",
                                       llm=None, resolution_grids=grids), replace=True)
        for name in names:
            self.variants.register(adapter_variant(Path(root), name, base, grids), replace=True)
            self.adapters.load(name, Path(root) / "adapters" / name)
        self.adapters.activate(None)
        self._weights_fingerprint = None  # the adapters are part of the weights
        return names

    # --- sessions -----------------------------------------------------------------------------
    def open_session(self, *, store: "SessionStore | None" = None, session_id: str | None = None,
                     variant: str | None = None, default_skill: str | None = None,
                     title: str = "", **options: Any) -> "Session":
        """A new session, or (``session_id``) a stored one resumed from ``store``."""
        from .session import Session

        return Session(self, store=store, session_id=session_id, variant=variant or self.default_variant,
                       default_skill=default_skill, title=title, **options)

    @property
    def skill_host(self) -> "SkillHost":
        # built on first use; sessions on several threads must share one host, not each build
        # their own (every plugin's skills registered twice over, their state split)
        with self._locks_guard:
            if self._skill_host is None:
                from .plugins import pm
                from .skill_host import SkillHost
                self._skill_host = SkillHost(pm)
            return self._skill_host

    # --- shared model access --------------------------------------------------------------------
    @property
    def weights_fingerprint(self) -> str:
        """A cheap identity of the weights, for provenance. Taken on first use, so a preset that
        swaps a component in after building the runtime (a partial Nano) is fingerprinted with
        it; `refresh_fingerprint` after changing weights later."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = _fingerprint(self.stack)
        return self._weights_fingerprint

    def refresh_fingerprint(self) -> str:
        self._weights_fingerprint = None
        return self.weights_fingerprint

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
        with self._vit_cache_guard:
            cached = self._vit_cache.get(key)
            if cached is not None:
                self._vit_cache.move_to_end(key)
                return cached
        views = process_anyres_image(image, list(grids), self.config.base_resolution)
        with torch.no_grad():
            features = vit(views.pixel_values.to(device=param.device, dtype=param.dtype))
        encoded = EncodedImage(features=features, patch_positions=views.patch_positions,
                               grid=tuple(views.grid), num_views=views.num_views)
        with self._vit_cache_guard:
            self._vit_cache[key] = encoded
            while len(self._vit_cache) > self._vit_cache_size:
                self._vit_cache.popitem(last=False)
        return encoded

    def clear_vit_cache(self) -> None:
        """Forget every cached ViT feature (memory back; the next turns encode their images
        afresh)."""
        with self._vit_cache_guard:
            self._vit_cache.clear()

    def render(self, features: "torch.Tensor", *, stage: int, options: TurnOptions,
               source: "Image.Image | None" = None,
               on_step: Callable[[int, int], None] | None = None, cancel: Any = None) -> "Image.Image":
        """Features ``(Q, vit_dim)`` -> one PIL image with de-tokenizer ``stage`` (1 or 2).

        ``options`` are the turn's, resolved against `render_defaults`: its ``seed``,
        ``num_inference_steps``, ``guidance_scale`` and (stage 2) ``image_guidance_scale`` reach
        the de-tokenizer under those names. Stage 2 conditions on ``source`` (SEED-X-Edit). The
        stage loads on first use. Raises ``core_models.detokenizer.DenoisingCancelled`` when
        ``cancel`` fires.
        """
        options = options.resolved(self.render_defaults)
        with self.lock("detokenizer"):
            adapter = self.stack.detokenizer(stage)
            size = self.config.image_size
            param = next(adapter.parameters())
            total = options.num_inference_steps

            def callback(pipe, step_index, timestep, callback_kwargs):
                if on_step is not None:
                    on_step(step_index + 1, total)
                return callback_kwargs

            kwargs: dict[str, Any] = dict(seed=options.seed, height=size, width=size,
                                          num_inference_steps=options.num_inference_steps,
                                          guidance_scale=options.guidance_scale,
                                          callback_on_step_end=callback, cancel=cancel)
            if stage == 2:
                kwargs.update(latent_image=source,
                              image_guidance_scale=options.image_guidance_scale)
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


def _torch_dtype(dtype: Any, placement: Placement):
    from core_models.stack import resolve_dtype

    return resolve_dtype(dtype) if dtype is not None else placement.torch_dtype()


def _stack_options(placement: Placement) -> dict[str, Any]:
    """What `SeedXStack.from_pretrained` needs of ``placement`` beyond the device map: the
    LLM's quantization (staged densely in CPU RAM, then quantized layer by layer onto its
    device), model offload of the de-tokenizer (execution and storage device) and VAE tiling."""
    offload = None
    if {"detokenizer", "vae"} & set(placement.offload_components):
        offload = (placement.device_for("detokenizer"), placement.storage_for("detokenizer"))
    return dict(quantization=placement.quantization,
                staging_device=placement.staging_device if placement.quantization else None,
                offload=offload, vae_tiling=placement.vae_tiling)


def _variant_registry(variants: VariantRegistry | None, load_plugins: bool) -> VariantRegistry:
    """The variants of a new runtime: ``variants`` (if given) plus what the ``register_variants``
    hook registers, the hook called exactly once per runtime. Without plugins, and no
    ``variants``: the released three."""
    if not load_plugins:
        return variants if variants is not None else VariantRegistry()
    from .plugins import pm

    registry = variants if variants is not None else VariantRegistry(())
    pm.hook.register_variants(register=registry.register)
    return registry


def _device_map(placement: Placement, root: Path, variant: str, dtype: Any, config: Any = None) -> Any:

    """The stack-level device map for ``placement``.

    One device: that device. Split or offload: the ViT, the resamplers and the de-tokenizer on
    the primary device, and the LLM's decoder layers where ``placement.llm_device_map`` puts them
    (accelerate's plan on the meta-built LLM; layers are never split, overflow goes to CPU, then
    disk under ``offload``).
    """
    if placement.kind in ("cpu", "gpu") and placement.offload_components:
        # offloaded components load straight into storage; the stack moves them over in use
        device_map = {"": placement.primary_device}
        device_map.update({c: placement.storage_for(c) for c in ("vit", "agent", "detokenizer", "vae")})
        return device_map
    if placement.kind in ("cpu", "gpu"):
        return placement.primary_device
    from accelerate import init_empty_weights

    from core_models.checkpoint import SeedXPaths
    from core_models.stack import build_agent, config_from_paths

    cfg = config_from_paths(SeedXPaths.resolve(root, variant), config=config)
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
