"""The arrows go one way: plugins -> seedx_agent -> core_models, with no loop inside seedx_agent.

Read from the source with ``ast``: every import, including the lazy ones inside functions, except
those under ``if TYPE_CHECKING:`` (annotations only, never run). Plugins are loaded by the plugin
manager by name, not imported, so they are no arrow.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = sorted(p.name for p in (REPO / "plugins").iterdir()
                         if (p / "__init__.py").is_file())


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO / "plugins" if path.is_relative_to(REPO / "plugins") else REPO)
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports outside TYPE_CHECKING blocks."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found |= {f"{name}.{a.name}" for a in node.names}
    return found


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


def test_core_models_imports_nothing_above_it():
    bad = {str(p.relative_to(REPO)): sorted(n for n in imports(p)
                                            if top(n) in {"seedx_agent", *PLUGIN_PACKAGES})
           for p in sources("core_models")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_seedx_agent_imports_no_plugin_package():
    bad = {str(p.relative_to(REPO)): sorted(n for n in imports(p) if top(n) in PLUGIN_PACKAGES)
           for p in sources("seedx_agent")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_plugins_use_only_public_names():
    private = re.compile(r"(^|\.)_[a-z]")
    bad = {}
    for package in PLUGIN_PACKAGES:
        for path in sources(f"plugins/{package}"):
            names = [n for n in imports(path) if top(n) in {"seedx_agent", "core_models"}
                     and private.search(n)]
            if names:
                bad[str(path.relative_to(REPO))] = sorted(names)
    assert bad == {}


def test_no_import_cycle_inside_seedx_agent():
    modules = {module_name(p): p for p in sources("seedx_agent")}
    graph = {m: {n for n in imports(p) if n in modules and n != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its own modules is not a loop with them
    for m in graph:
        graph[m] = {n for n in graph[m] if not m.startswith(n + ".")}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("folder", ["core_models", "seedx_agent", "plugins"])
def test_no_source_file_over_700_lines(folder):
    long = {str(p.relative_to(REPO)): n for p in sources(folder)
            if (n := len(p.read_text().splitlines())) > 700}
    assert long == {}


def test_one_atomic_write_helper_and_one_loc_bins():
    renames = [str(p.relative_to(REPO)) for folder in ("core_models", "seedx_agent", "plugins")
               for p in sources(folder) if re.search(r"\bos\.(replace|rename)\(", p.read_text())]
    assert renames == ["core_models/files.py"]
    definitions = [str(p.relative_to(REPO)) for folder in ("core_models", "seedx_agent", "plugins")
                   for p in sources(folder) if re.search(r"^\s*LOC_BINS\s*=", p.read_text(), re.M)]
    assert definitions == ["core_models/boxes.py"]


def test_seedx_agent_makes_no_temporary_directories():
    found = [str(p.relative_to(REPO)) for p in sources("seedx_agent")
             if re.search(r"mkdtemp|TemporaryDirectory|gettempdir", p.read_text())]
    assert found == []
