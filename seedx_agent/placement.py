"""Where every component of the stack lives: one plan for CPU, one GPU, several GPUs and offload.

No other module names a device. The runtime asks the plan for a component's device, and for the
LLM (the only part too large for some cards: 26 GB in bf16) a device map computed with
accelerate on the meta-built model.

Named memory profiles (`PROFILES`: ``80gb``, ``48gb``, ``24gb``) are the plans for the cards
people own; they decide in one place what is quantized, what waits in CPU RAM between uses and
which budget the estimate (`seedx_agent.memory_plan`) is checked against.

This module does not import torch at import time (``import seedx_agent`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Component = Literal["vit", "llm", "agent", "detokenizer", "vae"]

STORAGE_DEVICE = "cpu"
"""Where offloaded components wait between uses (``Placement.offload_components``)."""

QUANTIZATION_METHODS = {
    "int8": "torchao int8 weight-only (CPU and GPU)",
    "nf4": "bitsandbytes 4-bit NormalFloat (CUDA; bitsandbytes >= 0.49 also runs it on CPU)",
}
"""LLM weight quantizations: ``Placement.quantization["method"]``. Only the decoder layers'
linear layers are quantized; embeddings, ``lm_head``, norms and the resamplers keep ``dtype``."""


@dataclass(frozen=True)
class MemoryProfile:
    """A named plan for one card of ``budget`` bytes: the knobs `Placement.profile` sets."""

    name: str
    budget: str
    summary: str
    quantization: str | None = None
    offload_components: tuple[str, ...] = ()
    vae_tiling: bool = False


PROFILES: dict[str, MemoryProfile] = {p.name: p for p in (
    MemoryProfile("80gb", "80GiB", "everything in bf16, resident on the one GPU"),
    # The bf16 LLM (26 GB) + ViT (3.9 GB) + resamplers fit with a 4k-token KV cache (3.4 GB);
    # keeping both SDXL stages (2 x 5.1 GB) resident as well would leave ~3 GB for the UNet's
    # and VAE's activations at 1024x1024, too little for the 3-branch edit guidance. So the
    # de-tokenizer stages and the VAE wait in CPU RAM and come to the GPU one at a time.
    MemoryProfile("48gb", "48GiB", "LLM and ViT in bf16 on the GPU; each de-tokenizer stage and "
                  "the VAE moved onto it only while drawing", offload_components=("detokenizer", "vae")),
    MemoryProfile("24gb", "24GiB", "LLM linear layers in NF4 (~7 GB), ViT bf16 on the GPU; each "
                  "de-tokenizer stage and the VAE moved onto it only while drawing; tiled VAE",
                  quantization="nf4", offload_components=("detokenizer", "vae"), vae_tiling=True),
)}


@dataclass(frozen=True)
class Placement:
    """A placement plan.

    ``kind`` is ``"cpu"``, ``"gpu"`` (everything on ``devices[0]``), ``"split"`` (the LLM's
    layers spread over ``devices`` with ``max_memory``; the ViT, resamplers and de-tokenizer on
    the first device) or ``"offload"`` (LLM layers that don't fit ``max_memory`` go to CPU RAM,
    then to ``offload_folder``). ``dtype`` defaults to bf16 on GPUs and fp32 on CPU.
    """

    kind: Literal["cpu", "gpu", "split", "offload"] = "cpu"
    devices: tuple[str, ...] = ("cpu",)
    dtype: str | None = None
    max_memory: dict[str, str] | None = None
    offload_folder: str | None = None
    quantization: dict[str, Any] | None = None  # {"method": "nf4" | "int8", ...}; LLM only
    component_devices: dict[str, str] = field(default_factory=dict)
    offload_components: tuple[str, ...] = ()  # wait on STORAGE_DEVICE, come over while in use
    vae_tiling: bool = False
    profile_name: str | None = None  # the `PROFILES` name this plan came from

    # --- constructors ---------------------------------------------------------------------
    @classmethod
    def cpu(cls, dtype: str | None = None) -> "Placement":
        return cls(kind="cpu", devices=("cpu",), dtype=dtype)

    @classmethod
    def gpu(cls, index: int = 0, dtype: str | None = None) -> "Placement":
        return cls(kind="gpu", devices=(f"cuda:{index}",), dtype=dtype)

    @classmethod
    def split(cls, devices: tuple[str, ...] | list[str], max_memory: dict[str, str] | None = None,
              dtype: str | None = None) -> "Placement":
        return cls(kind="split", devices=tuple(devices), max_memory=max_memory, dtype=dtype)

    @classmethod
    def offload(cls, device: str = "cuda:0", max_memory: dict[str, str] | None = None,
                offload_folder: str | None = None, dtype: str | None = None) -> "Placement":
        return cls(kind="offload", devices=(device,), max_memory=max_memory,
                   offload_folder=offload_folder, dtype=dtype)

    @classmethod
    def profile(cls, name: str, device: str = "cuda:0",
                     max_memory: dict[str, str] | None = None) -> "Placement":
        """The plan of memory profile ``name`` (`PROFILES`) on ``device``.

        ``max_memory`` (e.g. ``{"cuda:0": "20GiB", "cpu": "64GiB"}``) replaces the profile's
        budget, for a card that is shared or smaller than the profile's name says.
        """
        if name not in PROFILES:
            raise ValueError(f"unknown memory profile {name!r}; known: {', '.join(PROFILES)}")
        prof = PROFILES[name]
        budget = {device: prof.budget, **(max_memory or {})}
        quantization = {"method": prof.quantization} if prof.quantization else None
        return cls(kind="gpu", devices=(device,), dtype="bfloat16", max_memory=budget,
                   quantization=quantization, offload_components=prof.offload_components,
                   vae_tiling=prof.vae_tiling, profile_name=name)

    def quantized(self, method: str | None, **options: Any) -> "Placement":
        """This plan with the LLM's linear layers quantized by ``method`` (`QUANTIZATION_METHODS`;
        None: not quantized)."""
        if method is not None and method not in QUANTIZATION_METHODS:
            raise ValueError(f"unknown quantization {method!r}; known: {', '.join(QUANTIZATION_METHODS)}")
        return replace(self, quantization={"method": method, **options} if method else None)

    def with_max_memory(self, max_memory: dict[str, str] | None) -> "Placement":
        """This plan with ``max_memory`` entries replacing (or adding to) its own."""
        if not max_memory:
            return self
        return replace(self, max_memory={**(self.max_memory or {}), **max_memory})

    @classmethod
    def auto(cls) -> "Placement":
        """One GPU when torch sees one, else CPU."""
        import torch
        return cls.gpu(0) if torch.cuda.is_available() else cls.cpu()

    @classmethod
    def parse(cls, spec: "str | Placement | None") -> "Placement":
        """``None``/"auto", "cpu", "cuda", "cuda:1", "split:cuda:0,cuda:1", "offload[:cuda:0]",
        a memory profile "24gb" / "profile:24gb" / "24gb@cuda:1", any of them with "+int8" or
        "+nf4" (quantize the LLM; "+none" un-quantizes a profile): "cpu+int8"."""
        if isinstance(spec, Placement):
            return spec
        if spec is not None and "+" in spec:
            base, _, method = spec.rpartition("+")
            return cls.parse(base or None).quantized(None if method == "none" else method)
        if spec in (None, "auto"):
            return cls.auto()
        name, _, device = spec.removeprefix("profile:").partition("@")
        if name in PROFILES:
            return cls.profile(name, device or "cuda:0")
        if spec.startswith("profile:"):
            raise ValueError(f"unknown memory profile {name!r}; known: {', '.join(PROFILES)}")
        if spec == "cpu":
            return cls.cpu()
        if spec.startswith("cuda"):
            return cls.gpu(int(spec.split(":")[1]) if ":" in spec else 0)
        if spec.startswith("split:"):
            return cls.split(spec[len("split:"):].split(","))
        if spec.startswith("offload"):
            return cls.offload(spec.split(":", 1)[1] if ":" in spec else "cuda:0")
        raise ValueError(f"unknown placement {spec!r}; use cpu, cuda[:N], split:DEV,DEV, "
                         f"offload[:DEV] or a memory profile ({', '.join(PROFILES)}), "
                         "optionally +int8 or +nf4")

    # --- queries ----------------------------------------------------------------------------
    @property
    def primary_device(self) -> str:
        return self.devices[0]

    def device_for(self, component: Component) -> str:
        """The device a whole component runs on (the LLM's embedding device under a device map;
        an offloaded component's execution device, where it is while in use)."""
        return self.component_devices.get(component, self.primary_device)

    def storage_for(self, component: Component) -> str:
        """Where ``component`` is kept between uses: `STORAGE_DEVICE` when offloaded."""
        return STORAGE_DEVICE if component in self.offload_components else self.device_for(component)

    @property
    def staging_device(self) -> str:
        """Where a quantized LLM is read densely before its layers are quantized onto its device
        (RAM, not the card the quantization exists to spare)."""
        return STORAGE_DEVICE

    @property
    def quantization_method(self) -> str | None:
        return (self.quantization or {}).get("method")

    def budget_bytes(self) -> dict[str, int]:
        """``max_memory`` in bytes per device (the budget a memory estimate is checked against)."""
        from core_models.checkpoint import parse_size

        return {dev: parse_size(size) for dev, size in (self.max_memory or {}).items()}

    def torch_dtype(self):
        import torch
        if self.dtype is not None:
            return getattr(torch, self.dtype)
        return torch.float32 if self.primary_device == "cpu" else torch.bfloat16

    def llm_device_map(self, model) -> dict[str, Any] | str:
        """The LLM's device map: a single device, or accelerate's plan over ``devices``.

        ``model`` is the LLM built on the meta device; decoder layers are never split.
        """
        if self.kind in ("cpu", "gpu"):
            return self.primary_device
        from accelerate.utils import get_balanced_memory, infer_auto_device_map

        no_split = [type(model.model.layers[0]).__name__] if hasattr(model, "model") else None
        max_memory = self.max_memory
        if max_memory is None and self.kind == "split":
            max_memory = get_balanced_memory(model, dtype=self.torch_dtype(),
                                             no_split_module_classes=no_split)
        return infer_auto_device_map(model, max_memory=max_memory, dtype=self.torch_dtype(),
                                     no_split_module_classes=no_split)

    def describe(self) -> str:
        extra = f", max_memory={self.max_memory}" if self.max_memory else ""
        if self.quantization_method:
            extra += f", LLM {self.quantization_method}"
        if self.offload_components:
            extra += f", offloaded to {STORAGE_DEVICE}: {','.join(self.offload_components)}"
        head = f"profile {self.profile_name}: " if self.profile_name else ""
        return f"{head}{self.kind} on {','.join(self.devices)} ({self.torch_dtype()}{extra})"


def parse_max_memory(spec: str | None) -> dict[str, str] | None:
    """``"cuda:0=20GiB,cpu=64GiB"`` -> ``{"cuda:0": "20GiB", "cpu": "64GiB"}`` (sizes checked)."""
    if not spec:
        return None
    from core_models.checkpoint import parse_size

    out: dict[str, str] = {}
    for item in spec.split(","):
        device, sep, size = item.strip().partition("=")
        if not sep or not device or not size:
            raise ValueError(f"max memory {item!r}: expected DEVICE=SIZE, e.g. cuda:0=20GiB")
        parse_size(size)  # a bad size is an error here, not at load time
        out[device] = size
    return out
