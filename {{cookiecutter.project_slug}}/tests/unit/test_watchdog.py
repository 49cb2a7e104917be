"""A worker that stops answering its own ping exits for a restart; one that answers stays."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from {{ cookiecutter.package_name }}.observability.watchdog import EXIT_STATUS, ConsumerWatchdog


class FakeControl:
    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.pings = 0

    def ping(self, destination: list[str], timeout: float) -> list[dict[str, Any]]:
        self.pings += 1
        return [{destination[0]: {"ok": "pong"}}] if self.answer else []


class FakeApp:
    def __init__(self, answer: bool) -> None:
        self.control = FakeControl(answer)


@pytest.fixture
def exits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    codes: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()
        raise SystemExit(code)  # ends the watchdog thread like a real exit would

    monkeypatch.setattr("os._exit", fake_exit)
    return codes


def run_for(watchdog: ConsumerWatchdog, seconds: float) -> None:
    watchdog.start()
    watchdog._thread.join(seconds)
    watchdog.stop()
    watchdog._thread.join(1)


def test_a_silent_worker_exits_for_a_restart(exits: list[int]) -> None:
    app = FakeApp(answer=False)
    run_for(ConsumerWatchdog(app, "default@host", interval=0.05, timeout=0.2), 2)  # type: ignore[arg-type]
    assert exits == [EXIT_STATUS]
    assert app.control.pings >= 3


def test_an_answering_worker_is_left_alone(exits: list[int]) -> None:
    app = FakeApp(answer=True)
    run_for(ConsumerWatchdog(app, "default@host", interval=0.05, timeout=0.2), 0.6)  # type: ignore[arg-type]
    assert exits == []
    assert app.control.pings >= 3


def test_a_worker_shutting_down_is_not_killed(exits: list[int]) -> None:
    app = FakeApp(answer=False)
    watchdog = ConsumerWatchdog(app, "default@host", interval=0.05, timeout=0.2)  # type: ignore[arg-type]
    watchdog.stop()
    run_for(watchdog, 0.6)
    assert exits == []
