"""Operate the ledger from a shell: dead letters and the periodic schedule (R14, R30).

    python -m {{ cookiecutter.package_name }}.ledger.cli dead list
    python -m {{ cookiecutter.package_name }}.ledger.cli dead replay TASK_ID
    python -m {{ cookiecutter.package_name }}.ledger.cli periodic list
    python -m {{ cookiecutter.package_name }}.ledger.cli periodic set NAME TASK --every 60
    python -m {{ cookiecutter.package_name }}.ledger.cli periodic set NAME TASK --cron "0 3 * * *"
    python -m {{ cookiecutter.package_name }}.ledger.cli periodic remove NAME

Beat picks schedule changes up within BEAT_RELOAD_INTERVAL seconds, without a restart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from sqlalchemy import delete, select

from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.deadletters import (
    NotReplayable,
    UnknownTask,
    list_dead,
    replay,
)
from {{ cookiecutter.package_name }}.ledger.models import PeriodicTask
from {{ cookiecutter.package_name }}.schedule import PeriodicSpec


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    area = parser.add_subparsers(dest="area", required=True)
    dead = area.add_parser("dead").add_subparsers(dest="action", required=True)
    dead.add_parser("list")
    dead.add_parser("replay").add_argument("task_id")
    periodic = area.add_parser("periodic").add_subparsers(dest="action", required=True)
    periodic.add_parser("list")
    put = periodic.add_parser("set")
    put.add_argument("name")
    put.add_argument("task")
    when = put.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", type=_positive_seconds, help="seconds between runs")
    when.add_argument("--cron", help='five fields, e.g. "0 3 * * *"')
    put.add_argument("--queue")
    put.add_argument("--kwargs", type=json.loads, default={})
    put.add_argument("--disabled", action="store_true")
    periodic.add_parser("remove").add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.area == "dead":
        return _dead(options)
    return _periodic(options)


def _dead(options: argparse.Namespace) -> int:
    if options.action == "list":
        with session_scope() as session:
            for row in list_dead(session, limit=500):
                attempts = f"attempts={row.attempts}"
                print(f"{row.id}  {row.state:6}  {row.name}  {attempts}  {row.last_error}")
        return 0
    from {{ cookiecutter.package_name }}.celery_app import app

    try:
        with session_scope() as session:
            record = replay(session, app, options.task_id)
    except (NotReplayable, UnknownTask) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"replayed as {record.id} ({record.state})")
    return 0


def _periodic(options: argparse.Namespace) -> int:
    with session_scope() as session:
        if options.action == "list":
            for row in session.scalars(select(PeriodicTask).order_by(PeriodicTask.name)):
                timing = f"every {row.interval_seconds}s" if row.interval_seconds else row.crontab
                state = "enabled" if row.enabled else "disabled"
                print(f"{row.name}  {row.task}  {timing}  {state}  last run {row.last_run_at}")
        elif options.action == "set":
            try:
                spec = PeriodicSpec(
                    options.name,
                    options.task,
                    options.every,
                    options.cron,
                    options.kwargs,
                    options.queue,
                )
            except ValueError as exc:
                print(f"error: invalid schedule: {exc}", file=sys.stderr)
                return 2
            session.merge(spec.row(enabled=not options.disabled))
        else:
            session.execute(delete(PeriodicTask).where(PeriodicTask.name == options.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
