"""The database's clock, for every comparison between processes (worker liveness).

Workers, the API and beat run on different machines whose clocks drift. A heartbeat
written with one machine's time and judged with another's would declare a live worker
dead, or a dead one alive, by the skew. So heartbeats, claims and their comparisons all
use `database_now()`, which the database evaluates: one clock for everybody. Values are
naive UTC, like every timestamp in the ledger (models.utcnow).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, Float, bindparam
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class database_now(FunctionElement[datetime]):  # noqa: N801 - reads like the SQL function it is
    """The database's current UTC time, shifted by `seconds` (negative: in the past).

    `seconds` is a number, or a bind parameter of a statement built once (statements.py).
    """

    type = DateTime()
    inherit_cache = True
    name = "database_now"

    def __init__(self, seconds: float | ColumnElement[float] = 0) -> None:
        if not isinstance(seconds, ColumnElement):
            # A bound value, not a literal: one cached statement serves every offset.
            seconds = bindparam(None, float(seconds), type_=Float)
        super().__init__(seconds)


def _seconds(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.clauses, **kw)})"


@compiles(database_now, "postgresql")
def _postgresql(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = _seconds(element, compiler, **kw)
    return f"(timezone('UTC', now()) + {seconds} * interval '1 second')"


@compiles(database_now, "mysql")
@compiles(database_now, "mariadb")
def _mysql(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = _seconds(element, compiler, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND({seconds} * 1000000), UTC_TIMESTAMP(6))"


@compiles(database_now, "sqlite")
def _sqlite(element: database_now, compiler: SQLCompiler, **kw: Any) -> str:
    # The text SQLAlchemy stores for a DateTime on SQLite, microseconds included, so the
    # values compare as strings: '%f' gives milliseconds, three zeros make them micro.
    seconds = _seconds(element, compiler, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%.6f seconds', {seconds}))"
