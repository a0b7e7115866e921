"""tools/ by job (tools/__init__.py): which package may import which, no import of a command-line module, no
cycle, no sys.path edits; pretrain/ and transfer/ never import tools."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what each part of tools/ may import besides itself, pretrain/ and transfer/ (tools/__init__.py's picture)
ALLOWED = {
    "results": set(), "data": set(), "launch": set(), "evaluate": set(),
    "figures": {"results"}, "bench": {"data"}, "proxy": {"data"},
    "benchmark": {"launch", "results"}, "study": {"data", "figures", "results"},
    "tables": {"results"}, "demo": set(),
}
ENTRY_POINTS = {"tools.tables", "tools.demo"}  # command-line modules at tools/ root


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from tools import tables`
    return found


def tools_modules() -> dict[str, Path]:
    return {module_name(p): p for p in (REPO / "tools").rglob("*.py")}


def test_every_tools_module_belongs_to_a_known_part():
    parts = {m.split(".")[1] for m in tools_modules() if m != "tools"}
    assert parts <= set(ALLOWED), f"parts of tools/ without a rule here and in tools/__init__.py: {parts - set(ALLOWED)}"
    root = {m for m in tools_modules() if m.count(".") == 1 and not (REPO / m.replace(".", "/")).is_dir()}
    assert root == ENTRY_POINTS


def test_imports_point_down_and_never_at_a_command_line_module():
    modules = tools_modules()
    bad = []
    for name, path in modules.items():
        if name == "tools":
            continue
        part = name.split(".")[1]
        for imp in imports(path):
            target = next((m for m in sorted(modules, key=len, reverse=True)
                           if imp == m or imp.startswith(m + ".")), None)
            if target is None or target == "tools":
                continue
            other = target.split(".")[1]
            if other != part and other not in ALLOWED[part]:
                bad.append(f"{name} imports {target} ({part} may import {sorted(ALLOWED[part]) or 'no tools'})")
            if (target.endswith(".__main__") or target in ENTRY_POINTS) and target != name:
                bad.append(f"{name} imports the command-line module {target}")
    assert not bad, "\n".join(bad)


def test_no_cycle_between_tools_modules():
    modules = tools_modules()
    graph = {n: {t for imp in imports(p) for t in modules
                 if t != n and t != "tools" and (imp == t or imp.startswith(t + "."))
                 and not n.startswith(t + ".")}  # a package's own __init__ is not an edge
             for n, p in modules.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack, node, nxt]))
            if nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


def test_no_sys_path_edits_and_library_code_never_imports_tools():
    for path in (REPO / "tools").rglob("*.py"):
        assert "sys.path" not in path.read_text(), f"{path.relative_to(REPO)} edits sys.path"
    for package in ("pretrain", "transfer"):
        for path in (REPO / package).rglob("*.py"):
            assert not any(i == "tools" or i.startswith("tools.") for i in imports(path)), \
                f"{path.relative_to(REPO)} imports tools"


def test_docs_run_tools_as_modules():
    """README, docs and the Makefile start every tool with `python -m tools.<job>`, none as a file path."""
    texts = [REPO / "README.md", REPO / "Makefile", *(REPO / "docs").glob("*.md")]
    bad = [f"{p.relative_to(REPO)}:{i}" for p in texts for i, line in enumerate(p.read_text().splitlines(), 1)
           if "python tools/" in line or "python3 tools/" in line]
    assert not bad, bad
