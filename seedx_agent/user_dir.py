"""Where seedx keeps what outlives a process when the caller names no place: sessions and artifacts.

``$SEEDX_HOME`` if set, else ``$XDG_DATA_HOME/seedx``, else ``~/.local/share/seedx`` (llm's
``user_dir()`` convention). The CLI's default store lives under it, and a session opened with
neither a store nor an ``artifact_dir`` writes its skills' files under ``artifacts/<session id>``
here, and says so in ``Session.artifact_dir``.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_dir() -> Path:
    home = os.environ.get("SEEDX_HOME")
    if home:
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME")
    return (Path(data).expanduser() if data else Path.home() / ".local" / "share") / "seedx"
