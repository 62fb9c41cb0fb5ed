"""Shared test fixtures: paths of the golden data copied from the official implementation."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
GOLDEN_TOKENIZER = FIXTURES / "golden_tokenizer"


@pytest.fixture(autouse=True, scope="session")
def _seedx_home(tmp_path_factory):
    """Nothing a test does lands in the real ``~/.local/share/seedx`` (`seedx_agent.user_dir`)."""
    import os

    home = tmp_path_factory.mktemp("seedx-home")
    old = os.environ.get("SEEDX_HOME")
    os.environ["SEEDX_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("SEEDX_HOME", None)
    else:
        os.environ["SEEDX_HOME"] = old


@pytest.fixture
def golden() -> Path:
    return GOLDEN


@pytest.fixture
def golden_tokenizer() -> Path:
    return GOLDEN_TOKENIZER


@pytest.fixture(scope="module")
def rt():
    """The untrained tiny runtime, built once per test module.

    One torch thread: on a shared 2-core machine the tiny stack is far faster that way.
    """
    import torch

    import seedx_agent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield seedx_agent.from_pretrained("tiny")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: the Nano's matrices are small (one thread is fastest) and
    the other core stays free."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nano(one_thread):
    """The shipped SEED-X Nano, once per module, on one thread."""
    import seedx_agent

    return seedx_agent.from_pretrained("nano")
