"""``seedx plugins``: what is installed, and what it registered (presets, skills, hooks).

The first thing to run when a model name or a skill is not found. ``SEEDX_LOAD_PLUGINS`` decides
which plugins load (docs/plugins.md). Nothing here imports torch.
"""

from __future__ import annotations

import json

import click

from .errors import EXIT_OK


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins(as_json: bool) -> int:
    """List the plugins, their hooks, the presets and the skills."""
    from ..plugins import BROKEN, get_plugins, pm
    from ..presets import default_preset, presets
    from ..skill_host import SkillHost

    loaded = get_plugins()
    default = default_preset()
    models = [{"name": p.name, "description": p.description, "default": p.name == default,
               "build": f"{getattr(p.build, '__module__', '?')}."
                        f"{getattr(p.build, '__qualname__', '?')}"}
              for p in presets().values()]
    skills = [{"name": s.name, "description": s.description, "consumes": sorted(s.consumes),
               "preferred_variant": s.preferred_variant, "variant_role": s.variant_role,
               "image_roles": list(s.image_roles), "deadline_s": s.deadline_s,
               "actions": sorted(s.action_types),
               "class": f"{type(s).__module__}.{type(s).__qualname__}"}
              for s in SkillHost(pm).skills.values()]
    if as_json:
        click.echo(json.dumps({"plugins": loaded, "broken": BROKEN, "presets": models,
                               "skills": skills}, indent=2))
        return EXIT_OK
    click.echo("plugins:" if loaded else "plugins: none loaded (see SEEDX_LOAD_PLUGINS)")
    for p in loaded:
        origin = f"{p['package']} {p['version']}" if p["package"] else "registered in code"
        click.echo(f"  {p['name']:<16} {origin:<24} hooks: {', '.join(p['hooks']) or '-'}")
    for name, error in BROKEN.items():
        click.echo(f"  {name:<16} FAILED TO LOAD: {error}")
    click.echo("presets (--model NAME):" if models else "presets: none")
    for m in models:
        mark = " (default)" if m["default"] else ""
        click.echo(f"  {m['name'] + mark:<16} {m['description']}")
    click.echo("skills:" if skills else "skills: none")
    for s in skills:
        runs_on = (f"needs a variant with the role {s['variant_role']}" if s["variant_role"]
                   else f"prefers {s['preferred_variant'] or 'any variant'}")
        images = f"; images {', '.join(s['image_roles'])}" if s["image_roles"] else ""
        click.echo(f"  {s['name']:<16} consumes {', '.join(s['consumes']) or '-'}; actions "
                   f"{', '.join(s['actions']) or '-'}; {runs_on}{images}\n"
                   f"  {'':<16} {s['description']}")
    return EXIT_OK
