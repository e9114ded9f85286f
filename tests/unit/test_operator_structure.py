"""The operator's shape, checked with ``ast``: no function over 50 lines, no test hook in production code."""

from __future__ import annotations

import ast
from pathlib import Path

OPERATOR = Path(__file__).resolve().parents[2] / "operator" / "kubetrain_operator"
MAX_LINES = 50


def _functions() -> list[tuple[str, int]]:
    out = []
    for path in sorted(OPERATOR.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                span = node.end_lineno - node.lineno + 1
                out.append((f"{path.relative_to(OPERATOR)}:{node.name}", span))
    return out


def test_no_function_in_the_operator_is_over_50_lines() -> None:
    functions = _functions()
    assert len(functions) > 100  # the walk found the code
    long = {name: lines for name, lines in functions if lines > MAX_LINES}
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_no_test_hook_in_the_operator() -> None:
    text = "\n".join(p.read_text() for p in OPERATOR.rglob("*.py"))
    assert "TEST_EXIT" not in text
    # The one os._exit is production behaviour: a leader that lost its Lease stops at once (leader.py).
    others = "\n".join(p.read_text() for p in OPERATOR.rglob("*.py") if p.name != "leader.py")
    assert "os._exit" not in others
    assert (OPERATOR / "leader.py").read_text().count("os._exit(") == 1
