"""A small client of the service's HTTP API, for tests that drive a running stack."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.waiting import NotYet, wait_until

TASKS = "/api/v1/tasks"
# Answers worth waiting through while polling (a failover makes the backend briefly 503).
TRANSIENT_STATUS = frozenset({502, 503, 504})


def task_state(body: Mapping[str, Any]) -> str:
    """The Celery state of a status body (`celery_state` when the ledger adds it)."""
    return str(body.get("celery_state", body["state"]))


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 30, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def submit(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        args: list[Any] | None = None,
        **options: Any,
    ) -> httpx.Response:
        """POST /api/v1/tasks; options: queue, countdown, eta, priority."""
        body: dict[str, Any] = {"name": name, "kwargs": dict(kwargs or {})}
        if args is not None:
            body["args"] = args
        body.update({key: value for key, value in options.items() if value is not None})
        return self.http.post(TASKS, json=body)

    def submit_ok(self, name: str, kwargs: Mapping[str, Any] | None = None, **options: Any) -> str:
        """Submit and insist on 202; returns the task id."""
        response = self.submit(name, kwargs, **options)
        if response.status_code != 202:
            raise AssertionError(f"submit {name}: {response.status_code} {response.text}")
        return str(response.json()["id"])

    def status(self, task_id: str) -> httpx.Response:
        return self.http.get(f"{TASKS}/{task_id}")

    def cancel(self, task_id: str) -> httpx.Response:
        return self.http.delete(f"{TASKS}/{task_id}")

    def wait_for_state(
        self,
        task_id: str,
        states: str | Collection[str],
        timeout: float = 30,
        interval: float = 0.2,
    ) -> dict[str, Any]:
        """Poll the status until its state is one of `states`; returns the body.

        Transient answers (connection errors, 502-504) are waited through; an end state
        that is not wanted (FAILURE while waiting for SUCCESS) fails at once.
        """
        wanted = {states} if isinstance(states, str) else set(states)

        def reached() -> dict[str, Any]:
            response = self.status(task_id)
            if response.status_code in TRANSIENT_STATUS:
                raise NotYet(f"{response.status_code} {response.text}")
            if response.status_code != 200:
                raise AssertionError(f"status of {task_id}: {response.status_code} {response.text}")
            body: dict[str, Any] = response.json()
            state = task_state(body)
            if state in wanted:
                return body
            if state in {"SUCCESS", "FAILURE", "REVOKED"}:
                raise AssertionError(f"task {task_id} ended {state}, wanted {wanted}: {body}")
            raise NotYet(body)

        what = f"task {task_id} in {wanted}"
        return wait_until(reached, timeout, what, interval, ignore=(httpx.TransportError,))

    def metrics(self) -> str:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return response.text


def metric_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The sum of the samples named `name` whose labels include `labels` (0 if none)."""
    wanted = dict(labels or {}).items()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and wanted <= sample.labels.items()
    )
