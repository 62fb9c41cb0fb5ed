"""Ways to embed seedx-agent in other people's apps, one sub-package each, named after it.

* ``langchain``: `ChatSeedX`, a LangChain chat model, and each skill as a LangChain tool;
* ``openai_server``: ``seedx serve``, an OpenAI-style HTTP API on FastAPI and uvicorn;
* ``gradio_ui``: ``seedx ui``, a web page on Gradio.

Each needs its extra (``pip install 'seedx-agent[langchain]'``, ``[serve]``, ``[ui]``); importing
this package imports none of them.
"""
