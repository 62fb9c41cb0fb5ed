"""SEED-X in LangChain: `ChatSeedX` (a chat model that answers with text, pictures and boxes,
keeping each conversation's KV cache between calls) and the skills as tools (`skill_tools`).

Needs the ``[langchain]`` extra (langchain-core 1.x). Docs: ``docs/langchain.md``.
"""

from .chat_model import DENOISE_EVENT, ChatSeedX
from .history_cache import HistoryCache, history_key
from .messages import UnsupportedContent
from .tools import skill_tool, skill_tools

__all__ = ["ChatSeedX", "DENOISE_EVENT", "HistoryCache", "history_key", "UnsupportedContent",
           "skill_tool", "skill_tools"]
