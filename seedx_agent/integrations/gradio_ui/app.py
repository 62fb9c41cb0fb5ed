"""The page: a multimodal chat over one runtime and one session store.

One turn streams: the chat follows the words as they come (a few times a second: sending the
chat on every token costs more than the Nano's decoding) and shows every denoising step, so the
person sees the answer being written and the picture being drawn (``denoising step k/N``). The
turn runs on Gradio's worker thread; the session's own locks keep two browser tabs that share a
runtime from interleaving on the model.

Nothing leaves 127.0.0.1: analytics off (here and through ``GRADIO_ANALYTICS_ENABLED``, which
Gradio reads at import), no share link, and `local_theme`, whose fonts are the system's: every
Gradio theme names Google Fonts, which the page would fetch from fonts.googleapis.com.
"""

from __future__ import annotations

import os
import time

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported anywhere below

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from .render import (PictureFiles, answer_messages, error_messages, progress_message,  # noqa: E402
                     user_messages)
from .sessions import SessionPool, artifacts  # noqa: E402

NO_SKILL = "none"
AUTO_VARIANT = "automatic"
TEXT_REFRESH_S = 0.15  # the chat follows the words this often; every denoising step is shown
SYSTEM_FONTS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
SYSTEM_MONO = ("ui-monospace", "Menlo", "Consolas", "monospace")


NO_SHARE_CSS = """
#seedx-chat button[aria-label="Share"], #seedx-chat button[title="Share"] { display: none; }
"""
"""Gradio 6 gives every picture in the chat a "share" button that no setting turns off (its
front end hard-codes it); sharing posts to Hugging Face, so the page hides it."""


def local_theme() -> gr.themes.Base:
    """Gradio's base theme with system fonts: a plain `gr.themes.Font` has no stylesheet, so the
    page loads no font file from anywhere."""
    return gr.themes.Base(font=[gr.themes.Font(n) for n in SYSTEM_FONTS],
                          font_mono=[gr.themes.Font(n) for n in SYSTEM_MONO])


def build_ui(runtime: Any, store: Any, *, num_inference_steps: int | None = None,
             max_new_tokens: int | None = None, title: str = "SEED-X") -> gr.Blocks:
    """The page for ``runtime``, keeping its sessions in ``store`` (a `seedx_agent.SessionStore`).

    ``num_inference_steps`` is the steps slider's starting value (default: the model's own);
    ``max_new_tokens`` bounds every reply. Serve it with `launch_ui`, which lets Gradio serve the
    store's pictures and artifacts and nothing else of the disk.
    """
    pool = SessionPool(runtime, store)
    pictures = PictureFiles(Path(store.root) / "ui" / "pictures", store.get_image)
    skills = [NO_SKILL, *sorted(runtime.skill_host.skills)]
    variants = [AUTO_VARIANT, *runtime.variants.names()]
    steps = num_inference_steps or runtime.render_defaults.num_inference_steps or 10

    def run_turn(message, chat, session_id, skill, variant, step_count, force_image, edit):
        text = (message or {}).get("text", "").strip()
        files = [str(f) for f in (message or {}).get("files", [])]
        chat = list(chat or [])
        if not text and not files:
            yield chat, session_id, gr.skip(), gr.skip(), gr.skip()
            return
        try:
            session = pool.get(session_id) if session_id else pool.new(title=text[:48] or "pictures")
        except Exception as exc:  # a session deleted from the store, a store that refuses writes
            raise gr.Error(f"cannot open the session: {exc}") from exc
        chat += shown(user_messages(text, files))
        yield chat, session.id, gr.MultimodalTextbox(value=None, interactive=False), gr.skip(), \
            gr.skip()
        answer_at = len(chat)
        streamed, drawing = "", {}
        options = dict(skill=None if skill == NO_SKILL else skill,
                       variant=None if variant == AUTO_VARIANT else variant,
                       num_inference_steps=int(step_count), force_image=bool(force_image),
                       edit=bool(edit), max_new_tokens=max_new_tokens)
        done, failure, shown_at = None, None, 0.0
        try:
            for event in session.turn(text, files, **options):
                if event.type == "text_delta":
                    streamed += event.text
                    if time.monotonic() - shown_at < TEXT_REFRESH_S:
                        continue
                elif event.type == "denoise_step":
                    drawing[event.index] = progress_message(event.index, event.step, event.total)
                elif event.type == "turn_done":
                    done = event
                    break
                else:
                    continue
                live = [{"role": "assistant", "content": streamed}] if streamed.strip() else []
                yield chat[:answer_at] + list(drawing.values()) + live, session.id, gr.skip(), \
                    gr.skip(), gr.skip()
                shown_at = time.monotonic()
        except Exception as exc:  # a turn reports its own failures; this is a bug, shown too
            failure = {"role": "assistant", "content": f"⚠ page: {exc!r}"}
        chat = chat[:answer_at] + list(drawing.values())
        if done is not None:
            chat += shown(answer_messages(done.parts, PicturesOf(pictures, session)))
            chat += error_messages(done.errors)
            chat += [{"role": "assistant", "content": f"ℹ {n.message}"} for n in done.notices]
            if done.finish_reason == "max_new_tokens":
                chat.append({"role": "assistant",
                             "content": "ℹ the reply reached its token limit and was cut there"})
        if failure is not None:
            chat.append(failure)
        yield chat, session.id, gr.MultimodalTextbox(value=None, interactive=True), \
            artifacts(session) or None, gr.Radio(choices=pool.choices(), value=session.id)

    def show(session) -> tuple:
        return (shown(pool.transcript(session, PicturesOf(pictures, session))), session.id,
                artifacts(session) or None, gr.Radio(choices=pool.choices(), value=session.id))

    def resume(session_id):
        if not session_id:
            raise gr.Error("Pick a session in the list first.")
        return show(pool.get(session_id))

    def fork(session_id):
        if not session_id:
            raise gr.Error("Pick a session in the list first.")
        try:
            return show(pool.fork(session_id))
        except ValueError as exc:
            raise gr.Error(str(exc)) from exc

    def new_session():
        return [], None, None, gr.Radio(choices=pool.choices(), value=None)

    with gr.Blocks(title=title, analytics_enabled=False) as page:
        session_id = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                # no "share" button: it posts the chat to Hugging Face Spaces discussions
                chat = gr.Chatbot(elem_id="seedx-chat", label="Chat", height=560,
                                  feedback_options=None, buttons=["copy", "copy_all"])
                box = gr.MultimodalTextbox(elem_id="seedx-input", file_types=["image"],
                                           file_count="multiple", show_label=False,
                                           placeholder="Ask, or upload a picture and ask about it")
            with gr.Column(scale=1):
                skill = gr.Radio(skills, value=NO_SKILL, label="Skill", elem_id="seedx-skill")
                variant = gr.Dropdown(variants, value=AUTO_VARIANT, label="Variant",
                                      elem_id="seedx-variant")
                step_count = gr.Slider(1, 50, value=steps, step=1, label="Denoising steps",
                                       elem_id="seedx-steps")
                force_image = gr.Checkbox(label="Answer with a picture", elem_id="seedx-force")
                edit = gr.Checkbox(label="Edit the latest picture", elem_id="seedx-edit")
                downloads = gr.File(label="Downloads", file_count="multiple",
                                    elem_id="seedx-downloads", interactive=False)
        with gr.Row():
            sessions = gr.Radio(pool.choices(), label="Sessions", elem_id="seedx-sessions")
        with gr.Row():
            resume_button = gr.Button("Resume", elem_id="seedx-resume")
            fork_button = gr.Button("Fork", elem_id="seedx-fork")
            new_button = gr.Button("New session", elem_id="seedx-new")

        box.submit(run_turn, [box, chat, session_id, skill, variant, step_count, force_image, edit],
                   [chat, session_id, box, downloads, sessions])
        resume_button.click(resume, [sessions], [chat, session_id, downloads, sessions])
        fork_button.click(fork, [sessions], [chat, session_id, downloads, sessions])
        new_button.click(new_session, None, [chat, session_id, downloads, sessions])
        page.load(lambda: gr.Radio(choices=pool.choices()), None, [sessions])
    return page


def shown(messages: list[dict]) -> list[dict]:
    """``messages`` with each picture as an image without Gradio's "share" button (it uploads
    the picture to Hugging Face), keeping download and full screen."""
    return [{**m, "content": gr.Image(m["content"]["path"], show_label=False,
                                      buttons=["download", "fullscreen"])}
            if isinstance(m.get("content"), dict) and "path" in m["content"] else m
            for m in messages]


class PicturesOf(PictureFiles):
    """The picture files, reading pictures through ``session`` (it holds the ones not yet
    stored, such as an input that came with a turn that failed)."""

    def __init__(self, pictures: PictureFiles, session: Any):
        super().__init__(pictures.dir, session.get_image)


def launch_ui(page: gr.Blocks, store: Any, *, host: str = "127.0.0.1", port: int | None = None,
              block: bool = True) -> gr.Blocks:
    """Serve ``page`` on ``host:port`` with no share link or button, no analytics and system
    fonts. Only the store's folder is served beyond Gradio's upload cache (pictures and
    artifacts live there). ``block=False`` returns once the server is up (tests)."""
    page.launch(server_name=host, server_port=port, share=False, theme=local_theme(),
                css=NO_SHARE_CSS,
                allowed_paths=[str(Path(store.root).resolve())], prevent_thread_lock=not block,
                inbrowser=False, show_error=True, footer_links=[], quiet=True, ssr_mode=False)
    return page
