"""Files that are either whole or absent.

Checkpoints, converted weights, session images, transcripts and skill artifacts are all written
the same way: into a temporary sibling of the destination (same directory, so the final rename
never crosses a file system), flushed to disk, then renamed over the destination in one step. A
crash, a full disk or a refused write at any point leaves the old file (or no file) in place and
at worst a hidden ``.<name>.tmp-*`` sibling, never a half-written destination.

This is the only place in the project that renames a temporary file into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json"]


@contextmanager
def atomic_write(path: str | Path, *, fsync: bool = True, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    ``directory=True`` yields a fresh empty directory instead (for a tree that must appear at
    once, such as an exported session); an existing destination directory must be empty. On any
    exception the temporary file or directory is removed and ``path`` is untouched.

        with atomic_write(out / "weights.safetensors") as tmp:
            save_file(tensors, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if directory:
        tmp.mkdir()
    try:
        yield tmp
        if fsync and not directory:
            _fsync(tmp)
        if directory and path.is_dir():
            path.rmdir()  # must be empty; rename cannot replace a directory portably
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync(path.parent)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """``data`` as JSON at ``path``, written atomically (ends with a newline)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, default=str) + "\n")


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory whose entries changed); a no-op where the platform
    cannot open it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
