"""JSON logs for every process, carrying request id, task id and task name (R39)."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

from celery import current_task
from pythonjsonlogger.json import JsonFormatter

from {{ cookiecutter.package_name }}.settings import Settings

#: The API request being served; also sent along in the headers of tasks it publishes.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(task_name)s %(task_id)s] %(message)s"


class ContextFilter(logging.Filter):
    """Stamp each record with the component, request id and running task."""

    def __init__(self, service: str, component: str) -> None:
        super().__init__()
        self.service = service
        self.component = component

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.component = self.component
        task = current_task if current_task else None
        request = task.request if task is not None else None
        record.task_id = getattr(record, "task_id", None) or getattr(request, "id", None)
        record.task_name = getattr(record, "task_name", None) or getattr(task, "name", None)
        record.request_id = request_id_var.get() or getattr(request, "request_id", None)
        return True


def configure_logging(settings: Settings, component: str) -> None:
    """Replace every root handler with one stdout handler (JSON unless LOG_JSON=false)."""
    handler = logging.StreamHandler(sys.stdout)
    formatter: logging.Formatter
    if settings.log_json:
        formatter = JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger"},
        )
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter(settings.service_name, component))
    logging.basicConfig(level=settings.log_level, handlers=[handler], force=True)
