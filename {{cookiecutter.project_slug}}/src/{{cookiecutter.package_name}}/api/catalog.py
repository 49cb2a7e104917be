"""The allowlist of tasks the API may submit, with an argument model per task (R07).

Argument models are derived from the task signatures, so the bounds written on a task's
parameters are the ones the API enforces; nothing is declared twice.
"""

from __future__ import annotations

import inspect
import typing
from fnmatch import fnmatchcase
from typing import Any

from celery import Celery, Task
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from {{ cookiecutter.package_name }}.queues import API_QUEUE_CHOICES


class SubmissionRejected(Exception):
    """The request names a task or arguments the API will not accept (answered with 422)."""


class TaskCatalog:
    def __init__(self, app: Celery, allowlist: tuple[str, ...]) -> None:
        app.loader.import_default_modules()
        self._app = app
        unknown = [name for name in allowlist if name not in app.tasks]
        if unknown:
            raise RuntimeError(f"API_TASK_ALLOWLIST names unregistered tasks: {unknown}")
        self._tasks: dict[str, Task] = {name: app.tasks[name] for name in allowlist}  # type: ignore[type-arg]
        self._models = {name: _argument_model(task) for name, task in self._tasks.items()}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._tasks)

    def task(self, name: str) -> Task:  # type: ignore[type-arg]
        if name not in self._tasks:
            raise SubmissionRejected(
                f"task {name!r} is not allowed; allowed tasks: {', '.join(self._tasks)}"
            )
        return self._tasks[name]

    def queue(self, name: str, requested: str | None) -> str:
        """The task's routed queue, or the one asked for if API_QUEUE_CHOICES allows it."""
        routed: str = self._app.amqp.router.route({}, name)["queue"].name
        if requested is None or requested == routed:
            return routed
        allowed = next(
            (queues for pattern, queues in API_QUEUE_CHOICES.items() if fnmatchcase(name, pattern)),
            (),
        )
        if requested not in allowed:
            raise SubmissionRejected(
                f"task {name!r} runs on queue {routed!r} and may not be moved to {requested!r}"
                f" (allowed: {', '.join(allowed) or 'none'}; see API_QUEUE_CHOICES)"
            )
        return requested

    def validate(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind args/kwargs to the task's parameters and check them; returns JSON kwargs."""
        task = self.task(name)
        try:
            bound = inspect.signature(task.run).bind(*args, **kwargs)
        except TypeError as exc:
            raise SubmissionRejected(f"arguments do not match {name}: {exc}") from exc
        try:
            model = self._models[name].model_validate(bound.arguments)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
                for error in exc.errors()
            )
            raise SubmissionRejected(f"invalid arguments for {name}: {problems}") from exc
        arguments = model.model_dump(mode="json")
        try:
            # Rules across arguments (tasks/base.py: ReliableTask.check_arguments).
            check = getattr(task, "check_arguments", None)
            if check is not None:
                check(arguments)
        except ValueError as exc:
            raise SubmissionRejected(f"invalid arguments for {name}: {exc}") from exc
        return arguments


def _argument_model(task: Task) -> type[BaseModel]:  # type: ignore[type-arg]
    hints = typing.get_type_hints(task.run, include_extras=True)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(task.run).parameters.items():
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (hints.get(name, Any), default)
    return create_model(
        f"{task.name.replace('.', '_')}_arguments",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
