"""Apply the ledger's schema: `python -m {{ cookiecutter.package_name }}.ledger.migrate upgrade head`.

deploy/entrypoints/migrate.sh runs this once before the app processes start.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from alembic import command
from alembic.config import Config


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", "{{ cookiecutter.package_name }}.ledger:migrations")
    return config


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?", default="head")
    options = parser.parse_args(argv)
    config = alembic_config()
    if options.action == "upgrade":
        command.upgrade(config, options.revision)
    elif options.action == "downgrade":
        command.downgrade(config, options.revision)
    else:
        command.current(config)


if __name__ == "__main__":
    main()
