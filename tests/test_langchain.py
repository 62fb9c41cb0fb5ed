"""`ChatSeedX` and the skill tools, through LangChain's own entry points (invoke, stream,
astream_events, tool calls). Replayed replies where only the plumbing matters; the Nano where
the answer must be real."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path

import pytest
from langchain_runtimes import nano, replay, require_langchain

require_langchain()

from langchain_core.messages import AIMessage, HumanMessage  # noqa: E402
from PIL import Image  # noqa: E402

from core_models.image_io import content_hash  # noqa: E402
from seedx_agent.integrations.langchain import ChatSeedX, UnsupportedContent, skill_tools  # noqa: E402
from seedx_agent.testing import Reply, ReplayGeneration  # noqa: E402

SCENE = Path(__file__).parent.parent / "examples" / "nano" / "scene.png"
SCENE_B64 = base64.b64encode(SCENE.read_bytes()).decode()
SCENE_ID = content_hash(Image.open(SCENE).convert("RGB"))


def standard_block() -> dict:
    return {"type": "image", "base64": SCENE_B64, "mime_type": "image/png"}


def openai_block() -> dict:
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{SCENE_B64}"}}


def merged(chunks):
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


def blocks(message, kind):
    content = message.content if isinstance(message.content, list) else []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


@pytest.fixture
def prefilled(monkeypatch):
    """Every token count a replayed session prefills, in order."""
    counts: list[int] = []
    original = ReplayGeneration.prefill

    def prefill(self, input_ids, inputs_embeds=None):
        before = len(self)
        original(self, input_ids, inputs_embeds)
        counts.append(len(self) - before)

    monkeypatch.setattr(ReplayGeneration, "prefill", prefill)
    return counts


# --- images in ------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [standard_block, openai_block], ids=["standard", "image_url"])
def test_both_image_shapes_reach_the_model(block):
    rt = replay(Reply().text("A scene.").eos())
    chat = ChatSeedX(runtime=rt)
    reply = chat.invoke([HumanMessage(content=[{"type": "text", "text": "Describe."}, block()])])
    assert reply.content == "A scene."
    (session,) = chat.history_cache.sessions()
    turn = session.history[0]
    assert turn.request.image_ids == (SCENE_ID,)
    assert turn.context.image_ids == (SCENE_ID,)  # the model read it, not only the transcript
    assert reply.usage_metadata["input_tokens"] > rt.config.num_img_tokens  # its placeholders


def test_remote_image_urls_are_refused_with_the_fix():
    chat = ChatSeedX(runtime=replay())
    for block in ({"type": "image", "url": "https://example.org/a.png"},
                  {"type": "image_url", "image_url": {"url": "http://example.org/a.png"}}):
        with pytest.raises(UnsupportedContent, match="does not fetch remote images.*base64"):
            chat.invoke([HumanMessage(content=[block, {"type": "text", "text": "What?"}])])


def test_pictures_go_through_the_products_front_door():
    """The same checks as every other way in (core_models.image_io.load_image): bad base64, a
    truncated file and an absurd aspect ratio are refused before the model runs."""
    import base64
    import io

    from PIL import Image

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    strip = base64.b64encode(png(Image.new("RGB", (400, 4)))).decode()
    cut = base64.b64encode(png(Image.new("RGB", (64, 64), (200, 10, 10)))[:60]).decode()
    chat = ChatSeedX(runtime=replay())
    for data, words in ((strip, "aspect ratio"), (cut, "truncated|corrupt|could not read"),
                        ("not base64!", "not valid base64")):
        block = {"type": "image", "base64": data, "mime_type": "image/png"}
        with pytest.raises(UnsupportedContent, match=words):
            chat.invoke([HumanMessage(content=[block, {"type": "text", "text": "What?"}])])


# --- answers out ------------------------------------------------------------------------------

def test_a_streamed_reply_carries_its_image_and_a_box_placed_on_it():
    rt = replay(Reply().text("Here is a red circle").box(112, 112, 56, 56).image(seed=3).eos())
    chat = ChatSeedX(runtime=rt, num_inference_steps=2)
    chunks = list(chat.stream("Draw a red circle."))
    assert isinstance(chunks[0].content, str)  # text first, as it is decoded
    full = merged(chunks)
    (image,) = blocks(full, "image")
    picture = Image.open(io.BytesIO(base64.b64decode(image["base64"])))
    assert image["mime_type"] == "image/png" and picture.format == "PNG"
    assert image["extras"]["image_id"] == content_hash(picture.convert("RGB"))
    (box,) = [b["value"] for b in blocks(full, "non_standard")]
    assert "red circle" in box["label"]
    assert box["image_id"] == image["extras"]["image_id"]
    x0, y0, x1, y1 = box["box_xyxy"]
    assert 0 <= x0 < x1 <= picture.width and 0 <= y0 < y1 <= picture.height
    assert full.response_metadata["model_name"] == "seed_x_i"
    assert full.response_metadata["finish_reason"] == "stop"


def test_the_nano_streams_a_drawn_image_and_boxes_an_object_on_a_scene():
    chat = ChatSeedX(runtime=nano(), num_inference_steps=2, max_tokens=40)
    drawn = list(chat.stream("Draw a blue square.", force_image=True))
    assert any(blocks(c, "image") for c in drawn[:-1])  # streamed when drawn, not at the end
    (image,) = blocks(merged(drawn), "image")
    assert Image.open(io.BytesIO(base64.b64decode(image["base64"]))).size == (
        image["extras"]["width"], image["extras"]["height"])

    grounded = merged(list(chat.stream([HumanMessage(content=[
        standard_block(), {"type": "text", "text": "Where is the blue square?"}])])))
    (box,) = [b["value"] for b in blocks(grounded, "non_standard")]
    assert "square" in box["label"]
    assert box["image_id"] == SCENE_ID
    x0, y0, x1, y1 = box["box_xyxy"]
    assert 0 <= x0 < x1 <= 192 and 0 <= y0 < y1 <= 128  # pixels of the 192x128 scene


def test_usage_metadata_counts_the_prompt_the_cache_and_the_reply():
    rt = replay(Reply().text("One.").eos(), Reply().text("Two, three.").eos())
    chat = ChatSeedX(runtime=rt)
    first = chat.invoke("Count to one.")
    usage = first.usage_metadata
    reply_tokens = len(rt.tokenizer.encode("One."))
    assert usage["output_tokens"] == reply_tokens
    assert usage["input_token_details"]["cache_read"] == 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    second = chat.invoke(["Count to one.", first, "Go on."]).usage_metadata
    assert second["input_token_details"]["cache_read"] == usage["total_tokens"]
    assert second["input_tokens"] > usage["total_tokens"]
    assert second["output_tokens"] == len(rt.tokenizer.encode("Two, three."))


def test_denoising_progress_shows_in_astream_events():
    rt = replay(Reply().image(seed=1).eos())
    chat = ChatSeedX(runtime=rt, num_inference_steps=2)

    async def events():
        return [e async for e in chat.astream_events("Draw.", version="v2")]

    custom = [e for e in asyncio.run(events()) if e["event"] == "on_custom_event"]
    assert [e["name"] for e in custom] == ["seedx_denoise"] * 2
    assert [(e["data"]["step"], e["data"]["total"]) for e in custom] == [(1, 2), (2, 2)]


def test_an_async_call_leaves_the_event_loop_free():
    chat = ChatSeedX(runtime=nano(), num_inference_steps=4, max_tokens=40)

    async def call_while_ticking():
        gaps, running = [], True

        async def tick():
            last = time.monotonic()
            while running:
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        reply = await chat.ainvoke("Draw a red circle.", force_image=True)
        took = time.monotonic() - started
        running = False
        await ticker
        return reply, took, gaps

    reply, took, gaps = asyncio.run(call_while_ticking())
    assert blocks(reply, "image")
    assert took > 0.1 and len(gaps) >= 5
    assert max(gaps) < took / 2  # the loop kept ticking while the model ran


# --- the kept conversation ---------------------------------------------------------------------

def test_a_second_call_prefills_only_its_new_message(prefilled):
    rt = replay(Reply().text("A scene.").eos(), Reply().text("Blue.").eos())
    chat = ChatSeedX(runtime=rt)
    history = [HumanMessage(content=[standard_block(), {"type": "text", "text": "Describe."}])]
    history.append(chat.invoke(history))
    (session,) = chat.history_cache.sessions()
    kv = session._kv[session.variant]
    before = len(kv)
    prefilled.clear()
    chat.invoke([*history, HumanMessage("Which colour?")])
    assert chat.history_cache.hits == 1 and chat.history_cache.misses == 1
    assert chat.history_cache.sessions() == [session]  # re-keyed to the longer history
    assert session._kv[session.variant] is kv  # the same cache, extended
    new_turn = session.history[-1]
    assert prefilled[0] == new_turn.prompt_tokens  # no history re-prefilled
    assert len(kv) == before + new_turn.prompt_tokens + new_turn.reply_tokens


def test_a_history_this_instance_never_answered_is_rebuilt_with_its_replies(prefilled):
    rt = replay(Reply().text("Blue.").eos())
    chat = ChatSeedX(runtime=rt)
    chat.invoke([HumanMessage(content=[standard_block(), "Describe."]), AIMessage("A scene."),
                 HumanMessage("Which colour?")])
    assert chat.history_cache.misses == 1
    (session,) = chat.history_cache.sessions()
    adopted, asked = session.history
    assert adopted.context.reply_ids == tuple(rt.tokenizer.encode("A scene."))
    assert adopted.context.image_ids == (SCENE_ID,)
    # the history is prefilled (prompt, then its reply as given), then the new turn
    assert prefilled[1] == len(adopted.context.reply_ids)
    assert len(rt.replay.played) == 1  # nothing was generated for the history


def test_the_cache_evicts_the_least_recently_used_conversation():
    rt = replay(*[Reply().text(f"Reply {i}.").eos() for i in range(6)])
    chat = ChatSeedX(runtime=rt, cache_max_entries=2)
    answers = {q: chat.invoke(q) for q in ("A?", "B?")}
    chat.invoke(["A?", answers["A?"], "A again?"])  # A is now the most recent
    answers["C?"] = chat.invoke("C?")  # B leaves
    assert len(chat.history_cache) == 2
    hits = chat.history_cache.hits
    chat.invoke(["B?", answers["B?"], "B again?"])
    assert chat.history_cache.hits == hits  # B was evicted: rebuilt
    chat.invoke(["C?", answers["C?"], "C again?"])
    assert chat.history_cache.hits == hits + 1


def test_the_cache_stays_within_its_memory_budget():
    rt = replay(*[Reply().text(f"Reply {i}.").eos() for i in range(3)])
    probe = ChatSeedX(runtime=rt)
    probe.invoke("A?")
    one = probe.history_cache.total_bytes
    assert one > 0
    chat = ChatSeedX(runtime=rt, cache_max_bytes=int(one * 1.5))
    chat.invoke("A?")
    chat.invoke("B?")
    assert len(chat.history_cache) == 1 and chat.history_cache.total_bytes <= one * 1.5


def test_two_instances_never_share_a_conversation():
    rt = replay(*[Reply().text(f"Reply {i}.").eos() for i in range(3)])
    first, second = ChatSeedX(runtime=rt), ChatSeedX(runtime=rt)
    answer = first.invoke("Hello?")
    second.invoke(["Hello?", answer, "And then?"])
    assert second.history_cache.hits == 0 and second.history_cache.misses == 1
    assert first.history_cache.hits == 0 and len(first.history_cache) == 1
    assert not set(map(id, first.history_cache.sessions())) & set(
        map(id, second.history_cache.sessions()))
    first.invoke(["Hello?", answer, "And then?"])
    assert first.history_cache.hits == 1  # its own entry was still there, untouched


# --- skills as tools ---------------------------------------------------------------------------

def test_the_grounding_tool_returns_a_short_text_and_the_crop_as_artifact():
    tools = {t.name: t for t in skill_tools(nano(), num_inference_steps=2)}
    assert {"seedx_grounding", "seedx_slides", "seedx_tryon"} <= set(tools)
    grounding = tools["seedx_grounding"]
    assert grounding.response_format == "content_and_artifact"
    message = grounding.invoke({"type": "tool_call", "id": "call-1", "name": grounding.name,
                                "args": {"request": "Where is the blue square?",
                                         "images": [str(SCENE)]}})
    assert "square" in message.content and len(message.content) < 300
    (locate,) = message.artifact["payloads"]
    assert type(locate).__name__ == "Locate" and locate.image_id == SCENE_ID
    crops = [Path(p) for p in message.artifact["artifacts"] if Path(p).name.startswith("crop_")]
    assert crops and all(p.is_file() for p in crops)
    assert Image.open(crops[0]).size[0] <= 192


def test_the_docs_example_runs_on_the_nano(monkeypatch, capsys):
    import seedx_agent

    docs = (Path(__file__).parent.parent / "docs" / "langchain.md").read_text()
    example = docs.split("```python\n", 1)[1].split("```", 1)[0]
    runtime = nano()  # the example loads the Nano: the one this process already has
    monkeypatch.setattr(seedx_agent, "from_pretrained", lambda name=None, **kw: runtime)
    monkeypatch.chdir(Path(__file__).parent.parent)
    namespace: dict = {}
    exec(compile(example, "docs/langchain.md", "exec"), namespace)
    assert namespace["png"]["mime_type"] == "image/png"
    assert any(Path(p).is_file() for p in namespace["message"].artifact["artifacts"])


def test_a_stop_sequence_ends_the_reply_and_the_cut_reply_is_not_kept():
    rt = replay(Reply().text("A red circle and a blue square.").eos())
    chat = ChatSeedX(runtime=rt)
    reply = chat.invoke("Describe.", stop=[" and"])
    assert reply.content == "A red circle"
    assert reply.response_metadata["finish_reason"] == "stop"
    (session,) = chat.history_cache.sessions()
    assert session.history[-1].status == "cancelled"
    assert not session.history[-1].context.in_context  # rolled back out of the model's context
