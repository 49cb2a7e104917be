"""A steady stream of `demo.record_effect` submissions through the API, recorded one by one.

Every submission writes one effect row when it runs, so the effects table counts
executions: what the chaos scenarios compare with what the API accepted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tests.harness.stack import TEST_SETTINGS, Stack

API_TIMEOUT = int(TEST_SETTINGS["API_TIMEOUT"])


@dataclass
class Submission:
    sent: float  # monotonic
    answered: float
    status: int | None
    task_id: str | None = None
    state: str | None = None  # PUBLISHED, or QUEUED when the broker did not take it
    error: str | None = None


class Producer(threading.Thread):
    """Submits tasks through the API one after the other until stopped.

    `seconds` gives each task's run time (`demo.record_effect`'s `seconds`); none: 0.
    """

    def __init__(
        self,
        stack: Stack,
        prefix: str,
        pace: float = 0.1,
        seconds: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name=f"producer-{prefix}", daemon=True)
        self.client = stack.api_client(timeout=API_TIMEOUT + 15)
        self.prefix = prefix
        self.pace = pace
        self.seconds = seconds
        self.submissions: list[Submission] = []
        self._halt = threading.Event()

    def run(self) -> None:
        number = 0
        while not self._halt.is_set():
            kwargs: dict[str, Any] = {"key": f"{self.prefix}-{number}"}
            if self.seconds is not None:
                kwargs["seconds"] = round(self.seconds(), 2)
            sent = time.monotonic()
            try:
                response = self.client.submit("demo.record_effect", kwargs)
            except httpx.HTTPError as exc:
                self.submissions.append(
                    Submission(sent, time.monotonic(), None, error=f"{type(exc).__name__}: {exc}")
                )
            else:
                accepted = response.status_code == 202
                self.submissions.append(
                    Submission(
                        sent,
                        time.monotonic(),
                        response.status_code,
                        task_id=response.json()["id"] if accepted else None,
                        state=response.json()["state"] if accepted else None,
                        error=None if accepted else response.text[:300],
                    )
                )
            number += 1
            self._halt.wait(self.pace)

    def stop(self) -> None:
        self._halt.set()
        self.join(API_TIMEOUT + 20)
        self.client.close()

    def accepted(self, after: float = 0.0) -> list[Submission]:
        return [s for s in list(self.submissions) if s.task_id is not None and s.sent >= after]

    def refused(self) -> list[Submission]:
        return [s for s in list(self.submissions) if s.task_id is None]
