"""The text the ledger keeps of an error (`last_error`), shown by the API to callers.

One place decides it: a database error is its driver's one-line message, never the SQL
statement or its parameters (they hold other rows' data); NUL and other control
characters go (PostgreSQL refuses NUL in text, and one such byte once made every
RETRY/DEAD update of a task fail); the rest is cut to a bounded length.
"""

from __future__ import annotations

import re

from sqlalchemy.exc import StatementError

# Room for a traceback's last lines, small enough for any TEXT column.
ERROR_LENGTH = 4000
# C0 controls but tab and newline, DEL, and the C1 block.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def describe(exc: BaseException) -> str:
    """`Type: message` of an exception, safe to store and to show."""
    if isinstance(exc, StatementError) and exc.orig is not None:
        lines = str(exc.orig).strip().splitlines()
        return clean(f"{type(exc.orig).__name__}: {lines[0] if lines else ''}")
    return clean(f"{type(exc).__name__}: {exc}")


def clean(text: str) -> str:
    """Without control characters (a lone surrogate becomes ?), cut to ERROR_LENGTH."""
    printable = _CONTROL.sub("", text).encode("utf-8", "replace").decode("utf-8")
    return printable[:ERROR_LENGTH]
