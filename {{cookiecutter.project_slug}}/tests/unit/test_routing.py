"""R09/R10: the declared queues, routes by name and by glob, overrides, and typo protection."""

from __future__ import annotations

import pytest
from celery import Celery
from celery.exceptions import QueueNotFound

from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES, TASK_QUEUES


def route(app: Celery, name: str, **options: str) -> str:
    app.loader.import_default_modules()
    queue: str = app.amqp.router.route(options, name)["queue"].name
    return queue


@pytest.mark.reliability("R09")
def test_three_queues_each_bound_by_its_own_name(celery_app: Celery) -> None:
    assert QUEUE_NAMES == ("high", "default", "low")
    for queue in TASK_QUEUES:
        assert queue.routing_key == queue.name
        assert queue.exchange.name == queue.name
    # The dead-letter queue is declared too, so publishing to it is not a typo (R14).
    assert set(celery_app.amqp.queues) == {*QUEUE_NAMES, "dead"}


@pytest.mark.reliability("R10")
@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("demo.urgent_ping", "high"),  # by exact name
        ("demo.reports.build_report", "low"),  # by module glob
        ("demo.reports.sum_chunk", "low"),
        ("demo.echo", "default"),  # unrouted: the default queue
        ("demo.sleep", "default"),
    ],
)
def test_tasks_are_routed_by_name_and_glob(celery_app: Celery, task: str, queue: str) -> None:
    assert route(celery_app, task) == queue


@pytest.mark.reliability("R10")
def test_explicit_queue_overrides_the_route(celery_app: Celery) -> None:
    assert route(celery_app, "demo.urgent_ping", queue="low") == "low"


@pytest.mark.reliability("R09")
def test_a_queue_name_typo_is_an_error_not_a_new_queue(celery_app: Celery) -> None:
    with pytest.raises(QueueNotFound):
        route(celery_app, "demo.echo", queue="hihg")
    assert "hihg" not in celery_app.amqp.queues
