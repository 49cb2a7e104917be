"""The harness's one way to wait: poll a check until it holds, or say what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a check to say why it does not hold yet (the reason ends up in the timeout)."""


def wait_until(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    step: float = 0.2,
    *,
    ignore: tuple[type[BaseException], ...] = (),
    detail: Callable[[], str] | None = None,
) -> T:
    """Call check() until it returns something truthy, and return that.

    NotYet and the `ignore` errors count as "not yet"; any other error ends the wait at
    once. After `timeout` seconds: TimeoutError naming `what`, the last reason or error
    seen (also chained as the cause), and `detail()` (e.g. a log tail).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    not_yet: tuple[type[BaseException], ...] = (NotYet, *ignore)
    while True:
        try:
            value = check()
        except not_yet as exc:
            value, last = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            seen = "" if last is None else f": last {type(last).__name__}: {last}"
            extra = "" if detail is None else f"\n{detail()}"
            raise TimeoutError(f"{what} (after {timeout:.0f} s){seen}{extra}") from last
        time.sleep(step)
