"""The web UI: a Gradio 6 page over one runtime and one session store (``seedx ui``).

A person chats with SEED-X in the browser: uploads pictures, sees answers with their boxes drawn
on the picture, generated and edited pictures, denoising progress, picks the skill and the
variant, resumes or forks a stored session and downloads what the skills wrote.

The page makes no request beyond the machine it is served from: analytics are off, share links
are off, the theme uses system fonts only (Gradio's own themes fetch Google Fonts), and Gradio's
front end is served from the installed package. docs/web_ui.md says more.

Importing this package imports gradio; ``import seedx_agent`` and ``seedx --help`` never do.
"""

from .app import build_ui, launch_ui

__all__ = ["build_ui", "launch_ui"]
