"""What a run saves, and how it is read back without unpickling arbitrary objects.

Every file the pipeline writes with ``torch.save`` holds only tensors and plain Python (dicts,
lists, tuples, str, numbers, None), so every read is ``torch.load(weights_only=True)``:

* ``data/*.pt`` and ``features/*.pt``: dicts of tensors (and, in ``data/examples_*.pt`` /
  ``pairs_*.pt``, the lists of task and variant names). Files written by earlier versions are
  the same and load as they are.
* ``stages/<stage>/ckpt.pt``: module states, optimizer state, step, elapsed seconds, loss history
  and the RNG states. The NumPy RNG state is stored as a tensor plus plain numbers.

Checkpoints written before the Nano moved into this plugin (``core_models.nano.train`` up to
be3f654) hold ``np.random.get_state()`` as pickled NumPy objects, which ``weights_only`` refuses.
They are read with exactly the globals that state needs allowlisted (`OLD_NUMPY_RNG_GLOBALS`:
the ndarray reconstructor, ``ndarray`` and the uint32 ``dtype``), still with ``weights_only=True``; a file
that needs anything else is refused with `CheckpointError`, which names the globals it asked for.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core_models.files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read safely (or at all); the message says which and why."""


def _old_numpy_rng_globals() -> list:
    """The globals ``np.random.get_state()`` pickles to: NumPy 2 writes ``numpy._core``, NumPy 1
    wrote ``numpy.core`` (same function); ``ndarray``; ``dtype`` and, where NumPy has per-dtype
    classes (>= 1.25), the uint32 one, whose state the unpickler sets (the key array is uint32)."""
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    uint32 = type(np.dtype(np.uint32))
    return [(reconstruct, "numpy._core.multiarray._reconstruct"),
            (reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *([uint32] if uint32 is not np.dtype else [])]


OLD_NUMPY_RNG_GLOBALS = _old_numpy_rng_globals()


# --- writing ------------------------------------------------------------------------------------

def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` into place atomically: a crash leaves the previous file, never half a file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_fp16(state: dict[str, torch.Tensor], path: Path) -> None:
    """A module state as fp16 safetensors (what a finished stage leaves beside its checkpoint)."""
    from safetensors.torch import save_file

    tensors = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
               for k, v in state.items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


# --- reading ------------------------------------------------------------------------------------

def load_data(path: Path) -> dict:
    """A ``data/`` or ``features/`` file: tensors and plain Python only."""
    return torch.load(path, weights_only=True)


def load_checkpoint(path: Path) -> dict:
    """A stage checkpoint of this or an earlier version, read with ``weights_only=True``.

    A file that is cut short or otherwise not a torch archive (`save_torch` never leaves one,
    but a copy interrupted halfway does) is a `CheckpointError` that says so and how to go on.
    """
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        pass  # an earlier version's checkpoint, with NumPy's RNG state pickled
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read this checkpoint (truncated or corrupt?): {first}. Delete it to "
            "train that stage again from its start, or put back a good copy.") from exc
    try:
        with torch.serialization.safe_globals(OLD_NUMPY_RNG_GLOBALS):
            return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        try:
            wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable torch archive
            wanted = []
        reason = re.search(r"WeightsUnpickler error:\s*(.*?)\n\s*\n", str(err), re.S)
        raise CheckpointError(
            f"{path}: refusing to unpickle it: it needs globals beyond tensors, plain Python and "
            f"the NumPy RNG state of earlier Nano checkpoints (it asks for "
            f"{', '.join(wanted) or 'unknown globals'}"
            f"{'; ' + reason.group(1).strip() if reason else ''}). If it is a stage checkpoint of a "
            "run you made yourself, delete it to restart that stage.") from err


def load_stage_modules(run, stage: str) -> dict[str, dict]:
    """The fp32 module states of a finished stage.

    From its last checkpoint when the run directory has it, else from the fp16 files the stage
    left beside it (``<module>.fp16.safetensors``): a finished stage is kept in the repository or
    copied between machines without its optimizer state, and what follows reads the same weights
    the export ships.
    """
    stage_dir = run.stage_dir(stage)
    if (stage_dir / "ckpt.pt").is_file():
        return load_checkpoint(stage_dir / "ckpt.pt")["modules"]
    files = sorted(stage_dir.glob("*.fp16.safetensors"))
    if not files:
        raise CheckpointError(f"{stage_dir}: stage {stage!r} left neither ckpt.pt nor "
                              "*.fp16.safetensors; delete its done.json to train it again")
    from safetensors.torch import load_file

    return {f.name.removesuffix(".fp16.safetensors"):
            {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(f)).items()}
            for f in files}


# --- RNG states ---------------------------------------------------------------------------------

def rng_state() -> dict:
    """torch, Python and NumPy global RNG states, as tensors and plain Python."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(), python=random.getstate(),
                numpy=dict(kind=str(kind), keys=torch.from_numpy(keys.astype(np.int64)),
                           pos=int(pos), has_gauss=int(has_gauss), cached_gaussian=float(cached)))


def restore_rng(state: dict) -> None:
    """Undo `rng_state` (or restore an earlier version's, whose ``numpy`` entry is the tuple
    ``np.random.get_state()`` returns)."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                 numpy["has_gauss"], numpy["cached_gaussian"])
    np.random.set_state(numpy)


def _as_tuples(value: Any) -> Any:
    """``random.setstate`` wants tuples where a round trip may give lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
