"""Reading the released SEED-X-17B checkpoints: where the files are, what each one must contain,
and how to stream them into a model without ever holding two copies of 52 GB.

The official code loads every file with ``torch.load`` and then ``load_state_dict(strict=False)``
after *silently dropping* shape-mismatched keys (``load_zero3_checkpoint``). A port must be
stricter, because a silently skipped tensor gives a model that runs and produces garbage. The
package reads in the order a load happens:

* `layout`: where each component of a variant is (`SeedXPaths`, the release's folder names);
* `reading`: safe reading of one file or a sharded checkpoint, and the errors it raises;
* `keys`: key conventions and the per-file key check;
* `peft_lora`: a peft LoRA training dump in the agent file, seen as dense weights;
* `device_maps` and `loading`: streaming a checkpoint into a model built on ``meta``;
* `writing`: saving safetensors and converting the pickled release, crash-safely;
* `adapter_extraction`: a variant LLM rewritten as a peft adapter on the base LLM, and
  `adapter_check`, its logits check with neither LLM in memory.

Everything other modules use is importable from here (``from core_models import checkpoint``).
"""

from .adapter_extraction import (ExtractionCheckFailed, ExtractionReport, PlannedAdapter,
                                 TensorDecision, compare_streamed_logits, extract_adapter,
                                 extract_adapters, harmonize, logits_agreement, low_rank_factors,
                                 plan_adapter, write_adapter)
from .device_maps import (DeviceMap, device_for, disjoint_device_map, dispatch_if_needed,
                          resolve_device_map)
from .keys import (QWEN_VISUAL_PREFIX, KeyMap, check_state_dict_keys, identity_key_map,
                   is_ignored_key, is_qwen_vl_chat_checkpoint, prefix_key_map, qwen_visual_key_map)
from .layout import (COMPONENTS, DETOKENIZER_DIRNAMES, QWEN_VIT_DIRNAME, QWEN_VIT_STEM,
                     QWEN_VL_CHAT_DIRNAME, SDXL_DIRNAME, SPLIT_REPOS, TOKENIZER_DIRNAME, VARIANTS,
                     SeedXPaths)
from .loading import LoadReport, assert_materialised, empty_init, load_into_model
from .peft_lora import PEFT_PREFIX, PeftLoraMergedView, plan_peft_merge
from .reading import (FP16_WEIGHT_FILE_NAMES, WEIGHT_FILE_NAMES, CheckpointError,
                      CheckpointMismatchError, CheckpointView, PathLike, SafetensorsFile, Shape,
                      TensorView, checkpoint_keys, find_weights, followed, iter_checkpoint_shards,
                      list_shards, load_state_dict_file, read_manifest, read_weight_map,
                      tensor_dtype, tensor_shape)
from .writing import (DEFAULT_MAX_SHARD_SIZE, convert_to_safetensors, parse_size, plan_shards,
                      save_state_dict, stored_nbytes)

__all__ = [
    # layout
    "COMPONENTS", "DETOKENIZER_DIRNAMES", "QWEN_VIT_DIRNAME", "QWEN_VIT_STEM",
    "QWEN_VL_CHAT_DIRNAME", "SDXL_DIRNAME", "SPLIT_REPOS", "TOKENIZER_DIRNAME", "VARIANTS",
    "SeedXPaths",
    # reading
    "FP16_WEIGHT_FILE_NAMES", "WEIGHT_FILE_NAMES", "CheckpointError", "CheckpointMismatchError",
    "CheckpointView", "PathLike", "SafetensorsFile", "Shape", "TensorView", "checkpoint_keys",
    "find_weights", "followed", "iter_checkpoint_shards", "list_shards", "load_state_dict_file",
    "read_manifest", "read_weight_map", "tensor_dtype", "tensor_shape",
    # keys
    "QWEN_VISUAL_PREFIX", "KeyMap", "check_state_dict_keys", "identity_key_map",
    "is_ignored_key", "is_qwen_vl_chat_checkpoint", "prefix_key_map", "qwen_visual_key_map",
    # peft_lora
    "PEFT_PREFIX", "PeftLoraMergedView", "plan_peft_merge",
    # device_maps, loading
    "DeviceMap", "device_for", "disjoint_device_map", "dispatch_if_needed", "resolve_device_map",
    "LoadReport", "assert_materialised", "empty_init", "load_into_model",
    # writing
    "DEFAULT_MAX_SHARD_SIZE", "convert_to_safetensors", "parse_size", "plan_shards",
    "save_state_dict", "stored_nbytes",
    # adapter_extraction
    "ExtractionCheckFailed", "ExtractionReport", "PlannedAdapter", "TensorDecision",
    "compare_streamed_logits", "extract_adapter", "extract_adapters", "harmonize",
    "logits_agreement", "low_rank_factors", "plan_adapter", "write_adapter",
]
