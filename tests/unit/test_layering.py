"""The import rules of docs/DESIGN.md §2, read from the source with ast:
every import counts, also those inside functions and under TYPE_CHECKING
(a cycle kept alive by a typing-only import is still a cycle to a reader)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("common", "netmond", "netmonctl")

# Cycles that exist and are being removed, each with where: the test fails
# when one of them is gone too, so that the list only shrinks. Empty since
# issue 15 broke the last one (netmonctl.fleetfile <-> netmonctl.transport).
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))}


def imported(name: str, root: Path = REPO) -> set[str]:
    """Every module (ours or not) that module `name` imports, anywhere in it.
    `from pkg import sub` counts as pkg.sub when that is one of our modules."""
    path = modules(root)[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names
                         if f"{target}.{alias.name}" in modules(root))
    return found


def graph() -> dict[str, set[str]]:
    """Our modules -> our modules they import (never themselves)."""
    return {name: {m for m in imported(name) if m in modules() and m != name} for name in modules()}


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_the_cycle_finder_finds_cycles_through_any_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(edges) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_counts_function_level_and_typing_only_imports(tmp_path):
    src = tmp_path / "netmond"
    src.mkdir()
    (src / "__init__.py").write_text("")
    (src / "one.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .two import X\n"
        "def f():\n    from . import three\n")
    for leaf in ("two", "three"):
        (src / f"{leaf}.py").write_text("")
    assert {"netmond.two", "netmond.three", "typing"} <= imported("netmond.one", tmp_path)


def test_no_import_cycle_in_common_netmond_netmonctl():
    found = set(cycles(graph()))
    assert found - KNOWN_CYCLES == set(), "import cycles (every import counts, typing-only too)"
    assert KNOWN_CYCLES - found == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


def test_common_imports_nothing_of_ours():
    offenders = {name: sorted(m for m in imported(name) if m.split(".")[0] in ("netmond", "netmonctl"))
                 for name in modules() if name.split(".")[0] == "common"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_netmonctl_never_imports_netmond():
    offenders = {name: sorted(m for m in imported(name) if m.split(".")[0] == "netmond")
                 for name in modules() if name.split(".")[0] == "netmonctl"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_ctypes_only_in_the_platform_layer_and_the_backends():
    allowed = ("netmond.platform", "netmond.backends")
    offenders = sorted(name for name in modules()
                       if any(m.split(".")[0] == "ctypes" for m in imported(name))
                       and not any(name == a or name.startswith(a + ".") for a in allowed))
    assert offenders == []


def test_the_platform_layer_is_chosen_in_one_place():
    """Only netmond/platform/__init__.py picks an OS module; the rest of netmond
    imports the package (the credential decoders are imported by tests alone)."""
    offenders = sorted(name for name in modules() if name != "netmond.platform"
                       and not name.startswith("netmond.platform.")
                       and {m for m in imported(name) if m.startswith("netmond.platform.")})
    assert offenders == []
