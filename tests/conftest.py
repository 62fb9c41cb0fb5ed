"""Shared test fixtures: paths of the golden data copied from the official implementation."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
GOLDEN_TOKENIZER = FIXTURES / "golden_tokenizer"


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

    from seedx_agent.runtime import Runtime

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Runtime.from_pretrained("tiny")
    torch.set_num_threads(threads)
