"""docs/RELIABILITY.md names only tests that exist: each `tests/...py` module, each
`module::test`, and each bare `test_name`, which belongs to the module named before it in
the same table cell. A renamed or deleted test fails here instead of leaving a row that
proves nothing."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
DOC = PROJECT / "docs" / "RELIABILITY.md"
# `tests/x/test_y.py`, `tests/x/test_y.py::test_z`, `test_z`, each maybe with a [param id].
PARAMETERS = r"(?:\[[^\]`]*\])?"
REFERENCE = re.compile(rf"`([\w/]*test_\w+\.py)(?:::(\w+){PARAMETERS})?`|`(test_\w+){PARAMETERS}`")


@cache
def functions_of(module: str) -> frozenset[str]:
    tree = ast.parse((PROJECT / module).read_text())
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def broken_references(text: str) -> tuple[int, list[str]]:
    """(references checked, the ones that name nothing) in the requirement rows."""
    checked, broken = 0, []
    for row in text.splitlines():
        if not re.match(r"\| R\d+ ", row):
            continue
        requirement = row.split("|")[1].strip()
        for cell in row.split("|"):
            module = None
            for path, name, bare in REFERENCE.findall(cell):
                checked += 1
                if path:
                    module = path
                    if not path.startswith("tests/") or not (PROJECT / path).is_file():
                        broken.append(f"{requirement}: {path} does not exist")
                        module = None
                        continue
                test = name or bare
                if not test:
                    continue
                if module is None:
                    broken.append(f"{requirement}: {test} follows no existing module")
                elif test not in functions_of(module):
                    broken.append(f"{requirement}: {module} has no {test}")
    return checked, broken


def test_every_test_the_reliability_doc_names_exists() -> None:
    checked, broken = broken_references(DOC.read_text())
    assert checked > 50, f"only {checked} references found: has the table's format changed?"
    assert not broken, "\n".join(broken)


def test_a_missing_test_is_reported() -> None:
    """The check itself can fail: a made-up row is caught on each kind of reference."""
    row = (
        "| R99 | x | `tests/unit/test_reliability_doc.py::test_not_here`, `test_nor_this[a-b]`,"
        " `tests/unit/test_no_such_module.py`,"
        " `test_reliability_doc.py::test_a_missing_test_is_reported` | |"
    )
    checked, broken = broken_references(row)
    assert checked == 4
    assert len(broken) == 4, broken
