"""The house rules of the tree: each layer imports only the layers below it, the pure core
touches no I/O, no module imports one that imports it back, and no module grows past
~400 lines without saying why at its top.

Layers, lowest first (a module may import its own layer and those below):

    kemi.core        parsing, policy, state tables, decisions (no KSR, sockets, Redis)
    kemi.config      referee.toml
    kemi.storage     Redis, the journal, the policy database
    kemi.kamailio    the KSR glue            |  agi   the Asterisk side (side by side:
    kemi.cli, agi.cli  the operator's command   |        neither imports the other)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("kemi", "agi")
# (layer, its rank); a module belongs to the longest prefix it matches.
LAYERS = {
    "kemi.core": 0,
    "kemi.config": 1,
    "kemi.storage": 2,
    "kemi.kamailio": 3,
    "agi": 3,
    "kemi.cli": 4,
    "agi.cli": 4,
}
SIDE_BY_SIDE = {("kemi.kamailio", "agi"), ("agi", "kemi.kamailio"), ("kemi.cli", "agi.cli")}
# What the pure core may never import (I/O and Kamailio).
IMPURE = ("KSR", "socket", "redis", "sqlite3", "psycopg", "subprocess", "asyncio", "select",
          "kemi.storage", "kemi.kamailio", "kemi.cli", "kemi.config", "agi")
# Imports of an impure module the core makes for a pure function, each with its reason.
ALLOWED = {
    ("kemi.core.policy.evaluate", "socket"):
        "socket.inet_pton only: address parsing, ~10x cheaper than ipaddress; no socket",
}
LONG_FILE = 400


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, name: str) -> set[str]:
    """Every module the file imports (absolute names; relative ones resolved)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from kemi.core import transfer" imports the module kemi.core.transfer (its
            # package's __init__ runs first, but that is Python's order, not a dependency)
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
            found.update(subs or {base})
    return found


def layer_of(module: str) -> str | None:
    best = None
    for layer in LAYERS:
        if (module == layer or module.startswith(layer + ".")) and (
                best is None or len(layer) > len(best)):
            best = layer
    return best


def _ours(imported: str) -> bool:
    return imported.split(".")[0] in PACKAGES


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imported in sorted(graph.items()):
        here = layer_of(module)
        for dep in sorted(imported):
            if not _ours(dep):
                continue
            there = layer_of(dep)
            if here is None or there is None or here == there:
                continue
            if (here, there) in SIDE_BY_SIDE or LAYERS[there] > LAYERS[here]:
                out.append(f"{module} ({here}) imports {dep} ({there})")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among our modules (each reported once, from its smallest member)."""
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):]
                found.append(cycle)
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        deps = set()
        for dep in _imports(path, name):
            # an import of a package counts as its __init__; keep only known modules
            while dep and dep not in MODULES and "." in dep:
                dep = dep.rpartition(".")[0]
            if dep in MODULES and dep != name:
                deps.add(dep)
        graph[name] = deps
    return graph


def test_every_module_belongs_to_a_layer():
    assert [m for m in MODULES if m not in ("kemi", "agi") and layer_of(m) is None] == []


def test_no_module_imports_a_layer_above_its_own_or_beside_it():
    assert violations(_graph()) == []


def test_no_import_cycles():
    assert cycles(_graph()) == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if layer_of(m) == "kemi.core"))
def test_the_core_touches_no_io(name):
    imported = _imports(MODULES[name], name)
    bad = sorted(i for i in imported for banned in IMPURE
                 if (i == banned or i.startswith(banned + ".")) and (name, i) not in ALLOWED)
    assert bad == []


def test_a_long_file_says_why_at_its_top():
    long_files = []
    for path in MODULES.values():
        text = path.read_text()
        if text.count("\n") > LONG_FILE:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why this file is long" not in doc:
                long_files.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
    assert long_files == []


# -- the checker itself, on made-up graphs: it must fail where the rules are broken ------
def test_the_checker_sees_an_upward_import_and_a_sideways_one():
    graph = {"kemi.core.transfer": {"kemi.storage.transfers"},
             "kemi.kamailio.refer": {"agi.follow"},
             "kemi.storage.transfers": {"kemi.core.state"}}
    assert violations(graph) == [
        "kemi.core.transfer (kemi.core) imports kemi.storage.transfers (kemi.storage)",
        "kemi.kamailio.refer (kemi.kamailio) imports agi.follow (agi)",
    ]


def test_the_checker_sees_a_cycle():
    graph = {"kemi.core.a": {"kemi.core.b"}, "kemi.core.b": {"kemi.core.c"},
             "kemi.core.c": {"kemi.core.a"}}
    assert cycles(graph) == [["kemi.core.a", "kemi.core.b", "kemi.core.c"]]
