"""The test tree's own rules (see tests/README.md).

- tests/unit/test_X.py tests the source module X: X is a module's name
  (`linux` for netmond/backends/linux.py) or the tail of its dotted path
  joined with "_" (`ebpf_loader` for netmond/backends/ebpf/loader.py), so
  the tests of a module are found by its name. The few exceptions are listed
  in UNIT_NOT_A_MODULE with the reason.
- Unit tests start no daemon and no fake nettop: what does is an
  integration test (tests/integration/).
- One way to wait: tests.helpers.wait_until (raises, saying what was awaited
  and the last value seen); no test module polls a deadline with sleeps of
  its own.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO

TESTS = REPO / "tests"
SOURCE_PACKAGES = ("common", "netmond", "netmonctl")

#: tests/unit modules that do not mirror one source module, and why.
UNIT_NOT_A_MODULE = {
    "test_packaging.py": "what users install: pyproject.toml, MANIFEST.in, LICENSE and the sdist",
    "test_layering.py": "which package may import which: the import graph of all modules",
    "test_function_length.py": "no function over 80 lines: every function of the three packages",
    "test_cli_options.py": "netmonctl's command line across cli, options, sorting and session",
}

#: What only integration tests may use: fixtures that start netmond, the fake nettop.
INTEGRATION_ONLY = ("start_daemon_thread", "start_daemon_process", "fake_nettop", "FAKE_NETTOP",
                    "path_with_fake_nettop")


def module_names() -> set[str]:
    """Every name a unit test module may carry for a source module: each tail
    of its dotted path, joined with '_' (a package by its __init__)."""
    names = set()
    for package in SOURCE_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.update("_".join(parts[i:]) for i in range(len(parts)))
    return names


def unit_modules() -> list[Path]:
    return sorted((TESTS / "unit").glob("test_*.py"))


def test_module_names_cover_nested_modules() -> None:
    names = module_names()
    assert {"linux", "backends_linux", "ebpf_loader", "ebpf", "client", "commands_top"} <= names


def test_every_unit_test_module_names_a_source_module() -> None:
    names = module_names()
    strays = [p.name for p in unit_modules()
              if p.name not in UNIT_NOT_A_MODULE and p.stem.removeprefix("test_") not in names]
    assert not strays, (
        f"{strays}: a tests/unit module is named test_<module>.py after the source module it tests "
        "(or listed in UNIT_NOT_A_MODULE with the reason)")


def test_the_allow_list_holds_no_module_name() -> None:
    present = {p.name for p in unit_modules()}
    names = module_names()
    stale = [n for n in UNIT_NOT_A_MODULE if n in present and n.removeprefix("test_").removesuffix(".py") in names]
    assert not stale, f"{stale}: named after a module now; drop from UNIT_NOT_A_MODULE"


def test_unit_tests_start_no_daemon_and_no_fake_nettop() -> None:
    found = [f"{p.name}: {word}" for p in unit_modules() for word in INTEGRATION_ONLY
             if re.search(rf"\b{word}\b", p.read_text())]
    assert not found, f"{found}: tests that start netmond or the fake nettop belong in tests/integration"


def polling_loops(source: str) -> list[int]:
    """Lines of `while` loops that sleep between looks at a deadline: hand-made
    waits, unless the line says `# not a wait: why` (pacing, measuring)."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.While) or "# not a wait:" in lines[node.lineno - 1]:
            continue
        sleeps = any(isinstance(n, ast.Call) and ast.unparse(n.func) == "time.sleep" for n in ast.walk(node))
        if sleeps and "deadline" in ast.unparse(node):
            found.append(node.lineno)
    return found


def test_polling_loops_are_found() -> None:
    assert polling_loops("while time.monotonic() < deadline:\n    time.sleep(1)\n") == [1]
    assert polling_loops("while time.monotonic() < deadline:  # not a wait: paces\n    time.sleep(1)\n") == []


def test_one_wait_helper() -> None:
    """Tests wait with tests.helpers.wait_until, not loops of their own."""
    own = [f"{p.relative_to(TESTS)}:{line}" for p in sorted(TESTS.rglob("*.py")) if p.name != "helpers.py"
           for line in polling_loops(p.read_text())]
    assert not own, f"{own}: wait with tests.helpers.wait_until (or say '# not a wait: why' on the loop)"
