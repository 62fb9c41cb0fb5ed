"""The LLM's linear layers in low precision: torchao int8 weight-only and bitsandbytes NF4.

A quantized load streams the LLM densely onto a staging device (`checkpoint.load_into_model`,
unchanged), then `quantize_llm` replaces its decoder linear layers one at a time by quantized
ones on the target device, so the device never holds the dense 26 GB LLM. Both methods share
that loop and differ only in the call that quantizes one layer, so the int8 path the CPU tests
run is the NF4 path a 24 GB card runs. The settings are transformers' own config objects
(``BitsAndBytesConfig``, ``TorchAoConfig``), the ones users know from ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .checkpoint.device_maps import DeviceMap

QUANTIZATION_SKIP = ("lm_head",)
"""Linear layers never quantized: the output head (its logits decide every token)."""


def quantization_config(quantization: Mapping[str, Any], compute_dtype: torch.dtype) -> Any:
    """transformers' config object for ``quantization`` (``{"method": "nf4" | "int8", ...}``).

    The objects users know from ``from_pretrained(quantization_config=...)`` carry every
    parameter: ``BitsAndBytesConfig`` (NF4, compute in ``compute_dtype``, optional
    ``double_quant``) and ``TorchAoConfig`` with torchao's ``Int8WeightOnlyConfig``.
    """
    method = quantization.get("method")
    if method == "nf4":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  bnb_4bit_use_double_quant=bool(quantization.get("double_quant")),
                                  llm_int8_skip_modules=list(QUANTIZATION_SKIP))
    if method == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(quant_type=Int8WeightOnlyConfig(),
                             modules_to_not_convert=list(QUANTIZATION_SKIP))
    raise ValueError(f"unknown LLM quantization {quantization!r}: method must be 'nf4' or 'int8'")


def quantizable_linears(llm: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The linear layers of the decoder layers (attention and MLP projections): what is quantized.

    Embeddings, ``lm_head``, norms and everything outside ``llm.model.layers`` (the resamplers
    live outside ``llm``) keep the load dtype: they are small, and the embedding rows of the 330
    SEED-X tokens and the output head are where low precision shows first.
    """
    return [(f"model.layers.{name}", module) for name, module in llm.model.layers.named_modules()
            if type(module) is nn.Linear and name.rsplit(".", 1)[-1] not in QUANTIZATION_SKIP]


def quantize_llm(llm: nn.Module, quantization: Mapping[str, Any], *, device: Any,
                 compute_dtype: torch.dtype) -> nn.Module:
    """Quantize ``llm``'s decoder linear layers in place, each moved to ``device`` as it is done.

    One loop serves both methods, so the CPU-testable int8 path is the NF4 path but for the one
    call that quantizes a layer. The weights arrive dense (streamed by `load_into_model` onto a
    staging device); quantizing layer by layer keeps the device's peak at the quantized model
    plus one dense linear layer, never the 26 GB bf16 LLM.
    """
    config = quantization_config(quantization, compute_dtype)
    quantize_one = _nf4_linear if quantization["method"] == "nf4" else _int8_linear
    for name, linear in quantizable_linears(llm):
        parent, _, leaf = name.rpartition(".")
        setattr(llm.get_submodule(parent), leaf, quantize_one(linear, config, device))
    return llm.to(device)


def _int8_linear(linear: nn.Linear, config: Any, device: Any) -> nn.Module:
    from torchao.quantization import quantize_

    quantize_(linear.to(device), config.quant_type)
    return linear


def _nf4_linear(linear: nn.Linear, config: Any, device: Any) -> nn.Module:
    import bitsandbytes as bnb

    quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                  compute_dtype=config.bnb_4bit_compute_dtype,
                                  compress_statistics=config.bnb_4bit_use_double_quant,
                                  quant_type=config.bnb_4bit_quant_type, device="meta")
    quantized.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                         quant_type=config.bnb_4bit_quant_type,
                                         compress_statistics=config.bnb_4bit_use_double_quant)
    if linear.bias is not None:
        quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
    if linear.out_features % 32 or linear.in_features % 64:
        # bitsandbytes' AVX512-bf16 CPU kernel repacks rows in blocks of 32 and columns in
        # 64-wide quantization blocks and fails on other sizes (SEED-X's 5120 / 13824 are
        # fine, small test models are not): those layers take the generic path
        quantized.support_avx512bf16_for_cpu = False
    return quantized.to(device)  # Params4bit quantizes on this move


def single_device(device_map: DeviceMap, what: str) -> Any:
    """The one device of ``device_map``; a quantized LLM is not split over devices."""
    if not isinstance(device_map, Mapping):
        return device_map if device_map is not None else torch.get_default_device()
    devices = set(device_map.values())
    if len(devices) != 1:
        raise NotImplementedError(f"{what}: a quantized LLM must sit on one device, not on "
                                  f"{sorted(map(str, devices))} (drop the quantization or the split)")
    return devices.pop()
