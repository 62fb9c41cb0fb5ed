"""LangChain's own standard tests for `ChatSeedX`, with its feature flags set truthfully.

The unit tests build the model from its parameters only (the runtime loads on first use, so
nothing is loaded there). The integration tests run on the Nano: its answers are toy answers,
but every call is a real SEED-X turn.

pytest-socket comes with langchain-tests but is not switched on here (nothing passes
``--disable-socket``), and ChatSeedX makes no network calls anyway. pytest-asyncio is in its
default strict mode, where an unmarked ``async def`` test is not run: the async standard tests
are unmarked (langchain's packages use ``asyncio_mode = "auto"``), so the class marks them.
"""

from __future__ import annotations

import pytest
from langchain_runtimes import nano, require_langchain

require_langchain()

from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from seedx_agent.integrations.langchain import ChatSeedX  # noqa: E402

DESELECTED = {
    "test_image_inputs": "downloads its picture from raw.githubusercontent.com; both image "
                         "shapes are covered offline in tests/test_langchain.py",
}
"""Standard integration tests not run, each with its reason: only those that need the internet
(and those that truly cannot apply). Each is marked ``xfail(run=False)`` below, the one way
langchain-tests accepts to leave a test out."""


class _Flags:
    """What ChatSeedX supports, said plainly (see the chat model's module doc)."""

    @property
    def chat_model_class(self) -> type[ChatSeedX]:
        return ChatSeedX

    @property
    def has_tool_calling(self) -> bool:
        return False  # SEED-X was not trained to call tools; skills are tools instead

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return True  # standard base64 blocks and OpenAI-style image_url data URLs

    @property
    def supports_image_urls(self) -> bool:
        return False  # remote URLs are refused: nothing is fetched

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_video_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per instance; a variant is picked with variant=


class TestChatSeedXUnit(_Flags, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "nano", "num_inference_steps": 2}


class TestChatSeedXIntegration(_Flags, ChatModelIntegrationTests):
    # langchain's own packages run these with asyncio_mode=auto; this project keeps pytest-asyncio
    # strict, so the async standard tests are marked here (the sync ones ignore the mark)
    pytestmark = pytest.mark.asyncio

    @property
    def chat_model_params(self) -> dict:
        return {"model": "nano", "runtime": nano(), "num_inference_steps": 2, "max_tokens": 24}

    # langchain-tests refuses any other way to leave a standard test out; run=False: not run
    @pytest.mark.xfail(reason=DESELECTED["test_image_inputs"], run=False)
    def test_image_inputs(self, model) -> None:
        super().test_image_inputs(model)
