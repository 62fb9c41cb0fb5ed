"""Where every component of the stack lives: one plan for CPU, one GPU, several GPUs and offload.

No other module names a device. The runtime asks the plan for a component's device, and for the
LLM (the only part too large for some cards: 26 GB in bf16) a device map computed with
accelerate on the meta-built model. Quantization is a field here so that quantized LLM loading
can be added without touching any caller.

This module does not import torch at import time (``import seedx_agent`` stays light).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Component = Literal["vit", "llm", "agent", "detokenizer", "vae"]


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
    quantization: dict[str, Any] | None = None  # e.g. {"load_in_4bit": True}; LLM only
    component_devices: dict[str, str] = field(default_factory=dict)

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
    def auto(cls) -> "Placement":
        """One GPU when torch sees one, else CPU."""
        import torch
        return cls.gpu(0) if torch.cuda.is_available() else cls.cpu()

    @classmethod
    def parse(cls, spec: "str | Placement | None") -> "Placement":
        """``None``/"auto", "cpu", "cuda", "cuda:1", "split:cuda:0,cuda:1", "offload[:cuda:0]"."""
        if isinstance(spec, Placement):
            return spec
        if spec in (None, "auto"):
            return cls.auto()
        if spec == "cpu":
            return cls.cpu()
        if spec.startswith("cuda"):
            return cls.gpu(int(spec.split(":")[1]) if ":" in spec else 0)
        if spec.startswith("split:"):
            return cls.split(spec[len("split:"):].split(","))
        if spec.startswith("offload"):
            return cls.offload(spec.split(":", 1)[1] if ":" in spec else "cuda:0")
        raise ValueError(f"unknown placement {spec!r}; use cpu, cuda[:N], split:DEV,DEV or offload[:DEV]")

    # --- queries ----------------------------------------------------------------------------
    @property
    def primary_device(self) -> str:
        return self.devices[0]

    def device_for(self, component: Component) -> str:
        """The device a whole component lives on (the LLM's embedding device under a device map)."""
        return self.component_devices.get(component, self.primary_device)

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
        return f"{self.kind} on {','.join(self.devices)} ({self.torch_dtype()}{extra})"
