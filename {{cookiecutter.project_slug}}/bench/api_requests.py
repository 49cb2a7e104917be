"""API: `POST /api/v1/tasks` and `GET /api/v1/tasks/{id}`, the project's app against bare ones.

All run under the project's gunicorn configuration (api/gunicorn_conf.py: the same worker
class and worker count); the bare apps are in bench/bare_api.py: `bare` answers canned
JSON, `celery-only` publishes and reads the result backend with nothing else.
`project-open` is the project's own app with API_AUTH=none: its ratio to `project` is the
cost of checking the key, its scopes and the caller's rate limit. Each endpoint
is loaded at each connection count for a fixed time (bench/http_load.py), the apps taking
turns.
Besides requests per second and latency percentiles, the figures count non-2xx answers
and socket errors, and the API processes' CPU time per request: wrk's connections can
pile onto one gunicorn worker, which requests per second alone would not show.
No worker runs: POSTed tasks stay queued and are thrown away after each run.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import SupervisedProcess
from tests.harness.stack import venv_bin

from bench.http_load import POST_BODY, Load, loader_name, run_load
from bench.rounds import ratio, rotated, summary
from bench.services import PROJECT_QUEUE, Services

TASKS = "/api/v1/tasks"
# The apps compared. The others, by their gunicorn app and settings, are the baselines
# of the ratios.
APPS = ("project", "project-open", "bare", "celery-only")
BASELINES: dict[str, tuple[str, dict[str, str]]] = {
    "project-open": (
        "{{ cookiecutter.package_name }}.api.app:app",
        {"API_AUTH": "none", "ENVIRONMENT": "development"},
    ),
    "bare": ("bench.bare_api:app", {}),
    "celery-only": ("bench.bare_api:celery_only", {}),
}
ENDPOINTS = ("POST", "GET")


def start_baseline(services: Services, name: str) -> tuple[SupervisedProcess, str]:
    """One of the baseline apps under the project's gunicorn configuration."""
    target, settings = BASELINES[name]
    port = free_port()
    process = services.process(
        name,
        [
            str(venv_bin() / "gunicorn"),
            "--config=python:{{ cookiecutter.package_name }}.api.gunicorn_conf",
            target,
        ],
        env={
            **settings,
            "API_BIND": f"{LOOPBACK}:{port}",
            "PROMETHEUS_MULTIPROC_DIR": str(services.stack.run_dir / f"{name}-prometheus"),
        },
    )
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = httpx.post(f"{url}{TASKS}", json=POST_BODY, headers=headers(services))
            if answer.status_code == 202:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not process.running:
            process.stop()
            raise TimeoutError(f"the {name} API did not answer\n{process.log_tail()}")
        time.sleep(0.2)


def headers(services: Services) -> dict[str, str]:
    """The stack's key: the project's API wants it, the baselines ignore it."""
    return {"X-API-Key": services.stack.api_key}


def submitted_task(services: Services, base_url: str) -> str:
    """The id of one task accepted by the API: the target of the GET load."""
    response = httpx.post(f"{base_url}{TASKS}", json=POST_BODY, headers=headers(services))
    response.raise_for_status()
    return str(response.json()["id"])


def measure(
    services: Services,
    process: SupervisedProcess,
    url: str,
    *,
    post: bool,
    connections: int,
    seconds: float,
) -> tuple[Load, float]:
    """One load run; (its figures, API CPU milliseconds per request)."""
    cpu_before = services.cpu_seconds(process)
    load = run_load(
        url, post=post, connections=connections, seconds=seconds, headers=headers(services)
    )
    cpu = services.cpu_seconds(process) - cpu_before
    if post:
        services.purge(PROJECT_QUEUE)
    return load, 1000 * cpu / max(load.requests, 1)


def figures(loads: list[tuple[Load, float]]) -> dict[str, Any]:
    return {
        "requests_per_second": summary([load.requests_per_second for load, _ in loads], "req/s"),
        "p50_ms": summary([load.p50_ms for load, _ in loads], "ms"),
        "p90_ms": summary([load.p90_ms for load, _ in loads], "ms"),
        "p99_ms": summary([load.p99_ms for load, _ in loads], "ms"),
        "cpu_ms_per_request": summary([cpu for _, cpu in loads], "ms"),
        "requests": sum(load.requests for load, _ in loads),
        "non_2xx": sum(load.non_2xx for load, _ in loads),
        "socket_errors": sum(load.socket_errors for load, _ in loads),
    }


def run(
    services: Services, *, rounds: int, seconds: float, connections: list[int]
) -> dict[str, Any]:
    bare = {name: start_baseline(services, name) for name in BASELINES}
    try:
        targets = {"project": (services.stack.processes["api"], services.stack.api_url), **bare}
        task_ids = {app: submitted_task(services, url) for app, (_, url) in targets.items()}
        cells = [(endpoint, count) for endpoint in ENDPOINTS for count in connections]
        loads: dict[tuple[str, str, int], list[tuple[Load, float]]] = {}
        for round_index in range(rounds):
            for endpoint, count in cells:
                for app in rotated(APPS, round_index):
                    process, base = targets[app]
                    post = endpoint == "POST"
                    url = f"{base}{TASKS}" if post else f"{base}{TASKS}/{task_ids[app]}"
                    measured = measure(
                        services, process, url, post=post, connections=count, seconds=seconds
                    )
                    loads.setdefault((app, endpoint, count), []).append(measured)
                    print(
                        f"bench: api {app} {endpoint} c{count}:"
                        f" {measured[0].requests_per_second:.0f} req/s,"
                        f" p99 {measured[0].p99_ms:.1f} ms",
                        flush=True,
                    )
    finally:
        for process, _ in bare.values():
            process.stop()
    results = []
    for endpoint, count in cells:
        found = {app: figures(loads[(app, endpoint, count)]) for app in APPS}
        path = TASKS if endpoint == "POST" else TASKS + "/{id}"
        for app in APPS:
            rate = found[app]["requests_per_second"]
            results.append(
                {
                    "app": app,
                    "endpoint": f"{endpoint} {path}",
                    "connections": count,
                    **found[app],
                    **{
                        f"ratio_to_{baseline.replace('-', '_')}": ratio(
                            rate, found[baseline]["requests_per_second"]
                        )
                        for baseline in BASELINES
                    },
                }
            )
    return {
        "loader": loader_name(),
        "seconds_per_run": seconds,
        "api_workers": services.stack.env.get("API_WORKERS"),
        "results": results,
    }
