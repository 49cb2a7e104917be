"""One engine per process, created lazily (after a prefork worker forks its children).

Two ways in, each with its own pool: `session_scope()` for transactions of several
statements (and for callers that add ORM rows), and `single_statement()` for the hot
path's one-statement writes and reads, on connections that stay in autocommit: one
round trip each, no BEGIN, no COMMIT, no rollback on return. (Switching a pooled
connection to autocommit and back costs more round trips than it saves.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import Connection, CursorResult, Engine, Executable, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from tenacity import retry, retry_if_exception, stop_after_attempt

from {{ cookiecutter.package_name }}.settings import Settings, get_settings

P = ParamSpec("P")
R = TypeVar("R")

# A pooled connection idle this long is pinged before use: the server may have closed it
# (a restart, a failover, an idle timeout). Busier connections are used without a ping.
IDLE_PING_AFTER = 10.0
_CHECKED_IN_AT = "checked_in_at"


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The pool for transactions (sessions, migrations, beat, reconcile)."""
    return _create_engine()


@lru_cache(maxsize=1)
def _autocommit_engine() -> Engine:
    """The pool for single statements: every connection in autocommit for good."""
    # Nothing is ever left open to roll back when a connection is returned.
    return _create_engine(isolation_level="AUTOCOMMIT", pool_reset_on_return=None)


def _create_engine(**options: Any) -> Engine:
    settings = get_settings()
    url = settings.database_dsn
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite: wait for the file lock instead of failing at once; WAL lets readers in.
        engine = create_engine(url, connect_args={"timeout": 30}, **options)
        event.listen(engine, "connect", _sqlite_wal)
        return engine
    engine = create_engine(
        url,
        # Each API request or task holds one connection of a pool at a time; the
        # overflow absorbs a burst, which then waits for a connection, not pool_timeout.
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_size,
        pool_recycle=1800,
        pool_timeout=settings.database_timeout,
        connect_args=_connect_args(url, settings),
        **options,
    )
    event.listen(engine, "checkin", _stamp_checkin)
    event.listen(engine, "checkout", _ping_if_idle(engine))
    return engine


def _stamp_checkin(_: object, record: ConnectionPoolEntry) -> None:
    record.info[_CHECKED_IN_AT] = time.monotonic()


def _ping_if_idle(engine: Engine) -> Callable[[Any, ConnectionPoolEntry, object], None]:
    """Pessimistic ping, but only after a pause: a dead connection is replaced, not used.

    Raising DisconnectionError makes the pool discard this connection and check out
    another (up to three times). A connection that dies while in steady use fails its
    statement instead, and `retry_on_disconnect` runs the operation again.
    """

    def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _: object) -> None:
        idle_since = record.info.get(_CHECKED_IN_AT)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER:
            return
        if not engine.dialect.do_ping(dbapi_connection):
            raise DisconnectionError("ledger connection closed while idle")

    return on_checkout


def _connect_args(url: str, settings: Settings) -> dict[str, Any]:
    """The driver's connect arguments: a timeout, and TLS where DATABASE_TLS_CA_FILE asks."""
    # A dead database must fail fast (then 503 / retry), not hang a request or a worker.
    arguments: dict[str, Any] = {"connect_timeout": settings.database_timeout}
{%- if cookiecutter.database != "sqlite" %}
    ca_file = settings.database_tls_ca_file
    if ca_file and url.startswith("postgresql"):
        # R50: libpq refuses a server whose certificate or host name does not match.
        arguments.update(sslmode="verify-full", sslrootcert=ca_file)
    elif ca_file and url.startswith("mysql"):
        arguments["ssl"] = {"ca": ca_file, "check_hostname": True}
{%- endif %}
    return arguments


def _sqlite_wal(dbapi_connection: object, _: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@lru_cache(maxsize=1)
def _sessions() -> sessionmaker[Session]:
    return sessionmaker(get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A transaction: committed when the block ends, rolled back if it raises."""
    with _sessions().begin() as session:
        yield session


@contextmanager
def single_statement() -> Iterator[Connection]:
    """A pooled connection in autocommit: each statement is its own transaction."""
    with _autocommit_engine().connect() as connection:
        yield connection


def _lost_connection(exc: BaseException) -> bool:
    """The server dropped the connection (SQLAlchemy has invalidated it and the pool)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def retry_on_disconnect(operation: Callable[P, R]) -> Callable[P, R]:
    """Run an idempotent ledger operation once more when its connection turned out dead.

    This replaces a ping on every checkout: the common case costs nothing, and the
    rare dropped connection costs one retry on a fresh one.
    """
    return retry(
        retry=retry_if_exception(_lost_connection), stop=stop_after_attempt(2), reraise=True
    )(operation)


def changed_rows(
    session: Session | Connection, statement: Executable, params: dict[str, Any] | None = None
) -> int:
    """Run an UPDATE/DELETE and say how many rows it touched (compare-and-set checks)."""
    return cast(CursorResult[Any], session.execute(statement, params)).rowcount


def open_engines() -> list[Engine]:
    """The engines this process has created so far (each with its pool)."""
    return [engine() for engine in (get_engine, _autocommit_engine) if engine.cache_info().currsize]


def reset_after_fork() -> None:
    """Forget connections inherited from a parent process (prefork children)."""
    for engine in open_engines():
        engine.dispose(close=False)
