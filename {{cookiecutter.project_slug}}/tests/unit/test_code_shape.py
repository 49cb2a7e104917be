"""Bars on the shape of the service's own code, so it cannot drift back."""

from __future__ import annotations

import ast
from pathlib import Path

import {{ cookiecutter.package_name }}

SOURCE = Path({{ cookiecutter.package_name }}.__file__).parent
MAX_FUNCTION_LINES = 50


def test_no_function_in_src_is_longer_than_the_bar() -> None:
    too_long = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    where = path.relative_to(SOURCE.parent)
                    too_long.append(f"{where}:{node.lineno} {node.name}() is {lines} lines")
    assert not too_long, f"split these (at most {MAX_FUNCTION_LINES} lines):\n" + "\n".join(
        too_long
    )


def test_observability_does_not_reach_into_the_ledger() -> None:
    """Logs and error reports stay out of the task ledger: its handlers live in ledger/."""
    package = "{{ cookiecutter.package_name }}.ledger"
    for path in sorted((SOURCE / "observability").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith(package), f"{path.name}: {node.module}"
