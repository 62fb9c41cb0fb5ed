"""Runtimes the LangChain tests share across their modules: the Nano loads once per process."""

from __future__ import annotations

import functools
import os


def require_langchain():
    """Skip without the ``[langchain]`` extra, except under ``CI=true``, where it must be there."""
    import pytest

    try:
        import langchain_core  # noqa: F401
        import langchain_tests  # noqa: F401
    except ImportError as exc:
        if os.environ.get("CI", "").lower() == "true":
            raise ImportError(f"{exc}: install the extra: pip install -c constraints.txt "
                              "-e '.[langchain,dev]'") from None
        pytest.skip(f"the [langchain] extra is not installed ({exc})", allow_module_level=True)


@functools.cache
def nano():
    """The shipped Nano, on one torch thread (its matrices are small; the other core stays free)."""
    import torch

    import seedx_agent

    torch.set_num_threads(1)
    return seedx_agent.from_pretrained("nano")


def replay(*replies):
    """A fresh tiny runtime that replays ``replies`` (cheap once the Nano's modules are loaded)."""
    import torch

    from seedx_agent.testing import replay_runtime

    torch.set_num_threads(1)
    return replay_runtime(replies)
