"""Pictures a skill writes: every PNG carries its provenance, and none is ever half-written.

Each skill that writes pictures needs the same three things: the provenance in a PNG text chunk
(so a picture copied out of its folder still says which model, variant, seed, steps, guidance
and parents made it), an atomic write (a reader or a crash never sees half a file), and a check
that the pixels it reads are the picture its action names. They live here, in the public API,
so a third-party skill writes artifacts exactly as the built-in ones do.

The host, in turn, keeps a skill to its own folder (`reported_artifacts`): a turn lists only
files under the skill's artifact directory, so a transcript never points at a file elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core_models.files import atomic_write

from .types import Provenance

PROVENANCE_KEY = "seedx:provenance"
"""The PNG text chunk that holds an artifact's provenance, as JSON."""


def provenance_json(provenance: Provenance | None) -> dict | None:
    """``provenance`` as the JSON an artifact records (None stays None)."""
    return None if provenance is None else provenance.model_dump(mode="json")


def save_png(image: Image.Image, path: Path, provenance: Provenance | None = None) -> Path:
    """Write ``image`` to ``path`` atomically, with ``provenance`` in its `PROVENANCE_KEY` chunk."""
    info = PngInfo()
    if provenance is not None:
        info.add_text(PROVENANCE_KEY, json.dumps(provenance_json(provenance), sort_keys=True))
    with atomic_write(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def reported_artifacts(paths: Any, artifact_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The files a skill reported, as ``(kept, refused)``.

    ``kept``: the resolved absolute paths, each once, of the files (or folders) that exist under
    ``artifact_dir`` (a relative path counts from there). ``refused``: the paths, as reported,
    that lead outside it, by ``..``, by being absolute elsewhere or through a symlink, or that no
    file system can name (a NUL byte). Skills write only under their artifact directory; a path
    elsewhere is a bug, or a skill trying to make the turn claim someone else's file, and the
    host reports it instead of listing it. A reported path that does not exist is neither.
    """
    root = Path(artifact_dir).resolve()
    kept: list[str] = []
    refused: list[str] = []
    for reported in paths:
        try:
            path = Path(reported)
            resolved = (path if path.is_absolute() else root / path).resolve()
        except (TypeError, ValueError, OSError, RuntimeError):  # NUL bytes, loops, not a path
            refused.append(str(reported))
            continue
        if not resolved.is_relative_to(root):
            refused.append(str(reported))
        elif resolved.exists() and str(resolved) not in kept:
            kept.append(str(resolved))
    return tuple(kept), tuple(refused)


def read_provenance(path: Path) -> Provenance | None:
    """The provenance a PNG written by `save_png` carries, or None."""
    with Image.open(path) as image:
        raw = image.text.get(PROVENANCE_KEY) if hasattr(image, "text") else None
    return None if raw is None else Provenance.model_validate_json(raw)


def load_picture(get_image: Callable[[str], Image.Image], picture: Any) -> Image.Image:
    """The RGB pixels of ``picture`` (anything with ``image_id``, ``width``, ``height``), checked
    against the size its action recorded: a store that answers with another picture is an error,
    not a wrong artifact."""
    image = get_image(picture.image_id).convert("RGB")
    if image.size != (picture.width, picture.height):
        raise ValueError(f"image {picture.image_id[:12]} is {image.size}, the action says "
                         f"{(picture.width, picture.height)}")
    return image
