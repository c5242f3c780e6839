"""No function in common/, netmond/ or netmonctl/ is longer than 80 lines
(def to last line, docstring included), so each reads as one step; the
backends' parsing loops, kept whole because they are the hot path of a tick
(a call per socket costs there), are the only exceptions, by name."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 80
# (path, function): the per-record loops of the netlink dumps.
PARSING_LOOPS = {
    ("netmond/backends/linux.py", "_tcp_samples"),
    ("netmond/backends/netlink.py", "_decode_messages"),
}


def long_functions(root: Path = REPO) -> dict[tuple[str, str], int]:
    found = {}
    for pkg in ("common", "netmond", "netmonctl"):
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        found[(path.relative_to(root).as_posix(), node.name)] = lines
    return found


def test_no_function_over_80_lines_outside_the_parsing_loops():
    found = long_functions()
    assert {k: v for k, v in found.items() if k not in PARSING_LOOPS} == {}


def test_the_rule_counts_nested_and_async_functions(tmp_path):
    pkg = tmp_path / "netmond"
    pkg.mkdir()
    body = "\n".join(f"        x = {i}" for i in range(MAX_LINES))
    (pkg / "m.py").write_text(f"class C:\n    async def long(self):\n{body}\n\n    def short(self):\n        pass\n")
    assert long_functions(tmp_path) == {("netmond/m.py", "long"): MAX_LINES + 1}
