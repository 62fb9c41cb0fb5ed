"""Key conventions of the released files, and the per-file key check.

Each file is compared with *its own* expected key set: the stage-1 de-tokenizer holds only the
resampler and the UNet's to_k/to_v, the agent file only the resamplers and ``patch_pos_embed``.
The official loader drops shape-mismatched keys silently and loads non-strictly, which gives a
model that runs and produces garbage; here anything missing, unexpected or mis-shaped is one
`CheckpointMismatchError` listing all of it.

Naming conventions handled (see tests/fixtures/golden/manifests/index.json):
``rotary_emb.inv_freq`` (written by transformers <= 4.30) is ignored everywhere; the ViT can come
from Qwen-VL-Chat shards, whose ``transformer.visual.*`` keys are kept with the prefix stripped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Union

from .reading import CheckpointMismatchError, PathLike, Shape, checkpoint_keys

KeyMap = Callable[[str], Union[str, None]]
QWEN_VISUAL_PREFIX = "transformer.visual."


def is_ignored_key(key: str) -> bool:
    """Keys no model here needs: rotary ``inv_freq`` tables (recomputed from the config)."""
    return key.endswith("rotary_emb.inv_freq")


def identity_key_map(key: str) -> str | None:
    return None if is_ignored_key(key) else key


def prefix_key_map(prefix: str) -> KeyMap:
    """Plain keys of a sub-module's checkpoint -> names inside the parent model."""
    return lambda key: None if is_ignored_key(key) else prefix + key


def qwen_visual_key_map(key: str) -> str | None:
    """Qwen-VL-Chat shard key -> ViT key: keep ``transformer.visual.*`` stripped, drop the rest.

    This is what ``reload_qwen_vit.py`` does through Qwen's remote code; reading the index
    directly needs neither that code nor transformers 4.32.
    """
    if not key.startswith(QWEN_VISUAL_PREFIX) or is_ignored_key(key):
        return None
    return key[len(QWEN_VISUAL_PREFIX):]


def is_qwen_vl_chat_checkpoint(path: PathLike) -> bool:
    """Whether a ViT checkpoint is the Qwen-VL-Chat model (``transformer.visual.*`` keys)."""
    return any(k.startswith(QWEN_VISUAL_PREFIX) for k in checkpoint_keys(path))


def check_state_dict_keys(found: Mapping[str, Shape], expected: Mapping[str, Shape], label: str,
                          key_map: KeyMap = identity_key_map) -> dict[str, str]:
    """Compare a checkpoint's ``{key: shape}`` with what its file must contain.

    Returns ``{model_key: checkpoint_key}`` for the keys that will be loaded; raises
    `CheckpointMismatchError` with all missing / unexpected / mis-shaped keys otherwise.
    """
    plan, unexpected, mismatched = {}, [], []
    for raw, shape in found.items():
        key = key_map(raw)
        if key is None:
            continue
        if key not in expected:
            unexpected.append(raw if key == raw else f"{raw} (as {key})")
        elif tuple(shape) != tuple(expected[key]):
            mismatched.append((key, tuple(shape), tuple(expected[key])))
        else:
            plan[key] = raw
    missing = [k for k in expected if k not in plan and not any(m[0] == k for m in mismatched)]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(label, missing, unexpected, mismatched)
    return plan
