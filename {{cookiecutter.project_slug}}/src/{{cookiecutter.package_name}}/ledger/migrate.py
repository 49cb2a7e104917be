"""Apply the ledger's schema: `python -m {{ cookiecutter.package_name }}.ledger.migrate upgrade head`.

deploy/entrypoints/migrate.sh runs this once before the app processes start. `wait` blocks
until the database is at the newest revision this image knows (Kubernetes
wait-for-migrations init containers): a pod of a new release never starts on an old schema.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from {{ cookiecutter.package_name }}.ledger.db import get_engine


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "{{ cookiecutter.package_name }}.ledger:migrations")
    return config


def schema_is_current(config: Config) -> bool:
    """Whether the database's revisions are exactly the heads of this image's migrations."""
    heads = set(ScriptDirectory.from_config(config).get_heads())
    with get_engine().connect() as connection:
        current = set(MigrationContext.configure(connection).get_current_heads())
    return current == heads


def wait_until_current(config: Config, timeout: float, interval: float = 2.0) -> int:
    """0 once the schema is current; 1 (with the reason) when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    reason = "not checked yet"
    while True:
        try:
            if schema_is_current(config):
                print("ledger schema is current", file=sys.stderr)
                return 0
            reason = "the database is not at this image's newest revision yet"
        except SQLAlchemyError as exc:
            reason = f"database unreachable: {type(exc).__name__}"
        if time.monotonic() >= deadline:
            print(f"gave up after {timeout:.0f} s: {reason}", file=sys.stderr)
            return 1
        print(f"waiting for migrations: {reason}", file=sys.stderr)
        time.sleep(interval)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["upgrade", "downgrade", "current", "wait"])
    parser.add_argument("revision", nargs="?", default="head")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="wait: seconds before giving up"
    )
    options = parser.parse_args(argv)
    config = alembic_config()
    if options.action == "wait":
        return wait_until_current(config, options.timeout)
    if options.action == "upgrade":
        command.upgrade(config, options.revision)
    elif options.action == "downgrade":
        command.downgrade(config, options.revision)
    else:
        command.current(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
