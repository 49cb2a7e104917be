"""Alembic environment: the ledger's engine and metadata, batch mode for SQLite.

A caller may hand over its own connection in `config.attributes["connection"]`
(tests migrating a scratch database do); otherwise the service's engine is used.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from {{ cookiecutter.package_name }}.ledger.db import get_engine
from {{ cookiecutter.package_name }}.ledger.models import Base


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    run(given)
else:
    with get_engine().connect() as own:
        run(own)
