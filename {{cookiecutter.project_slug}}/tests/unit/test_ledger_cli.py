"""The ledger CLI refuses a bad schedule with a reason and changes nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from {{ cookiecutter.package_name }}.ledger.cli import main
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import PeriodicTask


def run(argv: list[str]) -> int | str | None:
    """The CLI's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def names() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(PeriodicTask.name)))


@pytest.mark.reliability("R30")
@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--every", "-5"], "not a positive number"),
        (["--every", "soon"], "invalid"),
        (["--cron", "0 3 * *"], "invalid schedule"),
        (["--every", "5", "--kwargs", "{not json"], "invalid"),
    ],
)
def test_a_bad_schedule_is_refused_and_nothing_is_stored(
    args: list[str], reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = names()
    assert run(["periodic", "set", "bad-entry", "demo.echo", *args]) == 2
    assert reason in capsys.readouterr().err
    assert names() == before


@pytest.mark.reliability("R30")
def test_a_good_schedule_is_stored_and_removed() -> None:
    assert run(["periodic", "set", "cli-entry", "demo.echo", "--every", "30"]) == 0
    assert "cli-entry" in names()
    assert run(["periodic", "remove", "cli-entry"]) == 0
    assert "cli-entry" not in names()
