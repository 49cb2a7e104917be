"""Build each process kind's command line from settings and exec it.

deploy/entrypoints/*.sh call this, and every deployment and test starts processes through them:
one definition of how api, worker, beat{% if cookiecutter.use_flower == "yes" %} and flower{% endif %} start.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import get_args

from {{ cookiecutter.package_name }}.settings import QueueGroup, Settings, get_settings

CELERY_APP = "{{ cookiecutter.package_name }}.celery_app"


def api_command(settings: Settings) -> list[str]:
    return [
        "gunicorn",
        "--config",
        "python:{{ cookiecutter.package_name }}.api.gunicorn_conf",
        "{{ cookiecutter.package_name }}.api.app:app",
    ]


def worker_command(settings: Settings, queue: QueueGroup) -> list[str]:
    group = settings.worker_group(queue)
    return [
        "celery",
        "--app",
        CELERY_APP,
        "worker",
        f"--queues={group.queue}",
        # R19: -P on the command line, so gevent monkey-patches before anything imports.
        f"--pool={group.pool}",
        f"--concurrency={group.concurrency}",
        f"--hostname={group.queue}@%h",
        f"--loglevel={settings.log_level}",
    ]


def beat_command(settings: Settings) -> list[str]:
    return [
        "celery",
        "--app",
        CELERY_APP,
        "beat",
        # R29/R30: the database scheduler with its leader lease (celeryconfig.beat_scheduler).
        f"--loglevel={settings.log_level}",
    ]
{%- if cookiecutter.use_flower == "yes" %}


def flower_command(settings: Settings) -> list[str]:
    # Credentials travel in FLOWER_BASIC_AUTH (see main), never on the command line.
    return ["celery", "--app", CELERY_APP, "flower", f"--port={settings.flower_port}"]
{%- endif %}


def command_for(kind: str, queue: QueueGroup | None, settings: Settings) -> list[str]:
    if kind == "worker":
        if queue is None:
            groups = ", ".join(get_args(QueueGroup))
            raise SystemExit(f"worker needs a queue group: one of {groups}")
        return worker_command(settings, queue)
    builders = {
        "api": api_command,
        "beat": beat_command,
{%- if cookiecutter.use_flower == "yes" %}
        "flower": flower_command,
{%- endif %}
    }
    return builders[kind](settings)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["api", "worker", "beat"{% if cookiecutter.use_flower == "yes" %}, "flower"{% endif %}])
    parser.add_argument("queue", nargs="?", choices=get_args(QueueGroup))
    options = parser.parse_args(argv)
    settings = get_settings()
    command = command_for(options.kind, options.queue, settings)
    env = dict(os.environ)
{%- if cookiecutter.use_flower == "yes" %}
    if options.kind == "flower":
        # R35: Flower only behind authentication.
        password = settings.flower_password.get_secret_value()
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
{%- endif %}
    sys.stdout.flush()
    os.execvpe(command[0], command, env)  # noqa: S606 - replaces this process by design


if __name__ == "__main__":
    main()
