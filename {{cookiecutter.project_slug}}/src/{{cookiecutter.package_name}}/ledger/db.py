"""One engine per process, created lazily (after a prefork worker forks its children)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from {{ cookiecutter.package_name }}.settings import get_settings


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    settings = get_settings()
    url = settings.database_url.get_secret_value()
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # SQLite: wait for the file lock instead of failing at once; WAL lets readers in.
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_wal)
        return engine
    return create_engine(
        url,
        # Drop connections the server closed (a restart, a failover) before using them.
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_timeout=settings.database_timeout,
        connect_args=_connect_timeout(url, settings.database_timeout),
    )


def _connect_timeout(url: str, seconds: int) -> dict[str, int]:
    """A dead database must fail fast (then 503 / retry), not hang a request or a worker."""
    key = "connect_timeout"
    return {key: seconds} if url.startswith(("postgresql", "mysql")) else {}


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


def changed_rows(session: Session, statement: Executable) -> int:
    """Run an UPDATE/DELETE and say how many rows it touched (compare-and-set checks)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def reset_after_fork() -> None:
    """Forget connections inherited from a parent process (prefork children)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
