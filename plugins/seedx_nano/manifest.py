"""The export's ``nano_manifest.json``: what a Nano folder says about its own training.

The export (`seedx_nano.train.export`) writes it beside the release layout; the preset reads it to
know which components are trained (the rest get random stand-ins and a notice; once the ones in
`REQUIRED_FOR_DEFAULT` are, the Nano is the default model) and how it draws by default;
``seedx eval nano`` reads it to skip what is not trained yet. Keys: ``model``, ``base_variant``,
``adapters``, ``finished_stages``, ``plan`` (the training `Plan`), ``metrics``, ``bytes``,
optionally ``render_defaults``, ``render_defaults_sweep`` and ``variants``.

``render_defaults`` is the one place the Nano's steps and guidance live: the preset sets them
on the runtime, so a user's turn and ``seedx eval nano`` (which leaves them unset) draw alike;
``seedx eval nano --sweep`` chooses them on held-out scenes and writes them here
(`write_render_defaults`), with how it chose them in ``render_defaults_sweep``.

No torch here: the CLI and plugin discovery read manifests at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"   # where the trained Nano ships
MANIFEST_NAME = "nano_manifest.json"
# Training stages and the components they produce (seedx_nano.train).
STAGE_COMPONENTS: dict[str, str] = {
    "vit": "ViT visual tokenizer",
    "vae": "VAE",
    "llm": "LLM (text, boxes, image features)",
    "detok1": "de-tokenizer stage 1 (drawing)",
    "detok2": "de-tokenizer stage 2 (editing, try-on)",
    "lora": "task adapters (LoRA)",
}
REQUIRED_FOR_DEFAULT = ("vit", "vae", "llm", "detok1")  # describe, ground, count and draw


def read_manifest(root: str | Path | None = None) -> dict[str, Any] | None:
    """The manifest of the Nano at ``root`` (default: the shipped weights), or None."""
    path = Path(root if root is not None else WEIGHTS_DIR) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished_stages(root: str | Path | None = None) -> set[str]:
    manifest = read_manifest(root)
    return set(manifest.get("finished_stages", ())) if manifest else set()


def is_finished(root: str | Path | None = None,
                required: tuple[str, ...] = REQUIRED_FOR_DEFAULT) -> bool:
    """True when the Nano at ``root`` has finished every stage in ``required``."""
    return set(required) <= finished_stages(root)


def render_defaults(manifest: dict[str, Any] | None) -> dict[str, Any]:
    """How this Nano draws unless a turn says otherwise, as `seedx_agent.RenderDefaults` fields.

    A ``render_defaults`` mapping in the manifest wins (the export writes one, the held-out sweep
    rewrites its steps and guidance); an export made before it did gives the values its
    training evaluation sampled with: ``plan.sample_steps`` Euler
    steps at ``plan.guidance``. Fields it does not name keep the runtime's defaults.
    """
    manifest = manifest or {}
    given = manifest.get("render_defaults")
    if isinstance(given, dict):
        return dict(given)
    plan = manifest.get("plan") or {}
    out: dict[str, Any] = {}
    if plan.get("sample_steps"):
        out["num_inference_steps"] = int(plan["sample_steps"])
    if plan.get("guidance") is not None:
        out["guidance_scale"] = float(plan["guidance"])
    return out


def write_render_defaults(root: str | Path, chosen: dict[str, Any],
                          sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Put ``chosen`` rendering values into the manifest at ``root`` (atomically), keeping the
    fields it does not name (the ``seed`` among them), and ``sweep`` as ``render_defaults_sweep``.
    Returns the new ``render_defaults``. The starting point is what the runtime drew with so far
    (`render_defaults`), so an older export's plan-derived values do not silently change."""
    from core_models.files import write_json

    path = Path(root) / MANIFEST_NAME
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"no readable {MANIFEST_NAME} at {root}")
    updated = {**render_defaults(manifest), **chosen}
    manifest["render_defaults"] = updated
    if sweep is not None:
        manifest["render_defaults_sweep"] = sweep
    write_json(path, manifest, sort_keys=True)
    return updated
