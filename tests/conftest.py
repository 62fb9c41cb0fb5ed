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
