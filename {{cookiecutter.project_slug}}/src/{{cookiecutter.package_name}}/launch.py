"""Build each process kind's command line from settings and exec it.

deploy/entrypoints/{api,worker,beat{% if cookiecutter.use_flower == "yes" %},flower{% endif %}}.sh exec this, and every deployment and test starts
those processes through them: one definition of how each starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import get_args

from {{ cookiecutter.package_name }}.queues import QUEUE_NAMES
from {{ cookiecutter.package_name }}.settings import Pool, Settings, WorkerGroup, get_settings

CELERY_APP = "{{ cookiecutter.package_name }}.celery_app"


def api_command(settings: Settings) -> list[str]:
    return [
        "gunicorn",
        "--config",
        "python:{{ cookiecutter.package_name }}.api.gunicorn_conf",
        "{{ cookiecutter.package_name }}.api.app:app",
    ]


def worker_command(settings: Settings, group: WorkerGroup) -> list[str]:
    return [
        "celery",
        "--app",
        CELERY_APP,
        "worker",
        f"--queues={','.join(group.queues)}",
        # R19: -P on the command line, so gevent monkey-patches before anything imports.
        f"--pool={group.pool}",
        f"--concurrency={group.concurrency}",
        f"--hostname={group.name}@%h",
        f"--loglevel={settings.log_level}",
    ]


def worker_group(settings: Settings, options: argparse.Namespace) -> WorkerGroup:
    """The group named on the command line (settings), with any flag overriding it.

    Compose starts `worker.sh high`; a Kubernetes Deployment spells its group out
    (`worker.sh --name=bulk --queues=low,default --pool=gevent --concurrency=50`).
    """
    base = settings.worker_group(options.queue) if options.queue else None
    queues = tuple(q for q in (options.queues or "").split(",") if q) or (
        base.queues if base else ()
    )
    pool = options.pool or (base.pool if base else None)
    concurrency = options.concurrency or (base.concurrency if base else None)
    if not queues or pool is None or concurrency is None:
        groups = ", ".join(QUEUE_NAMES)
        raise SystemExit(
            f"worker needs a queue group ({groups}) or all of --queues, --pool and --concurrency"
        )
    unknown = sorted(set(queues) - set(QUEUE_NAMES))
    if unknown:
        raise SystemExit(
            f"worker --queues names unknown queues {', '.join(unknown)}:"
            f" the queues are {', '.join(QUEUE_NAMES)} (queues.py)"
        )
    name = options.name or (base.name if base else queues[0])
    return WorkerGroup(name, queues, pool, concurrency)


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
    # Credentials travel in FLOWER_BASIC_AUTH (see main), never on the command line;
    # flower_server puts Flower's /metrics behind that login too.
    return [
        sys.executable,
        "-m",
        "{{ cookiecutter.package_name }}.flower_server",
        "--app",
        CELERY_APP,
        "flower",
        f"--port={settings.flower_port}",
        # A dashboard, not a producer: tasks are sent and cancelled through the API and its
        # ledger, so Flower's apply, send, revoke and pool-control endpoints answer 403.
        "--read_only=True",
    ]
{%- endif %}


def command_for(kind: str, options: argparse.Namespace, settings: Settings) -> list[str]:
    if kind == "worker":
        return worker_command(settings, worker_group(settings, options))
    builders = {
        "api": api_command,
        "beat": beat_command,
{%- if cookiecutter.use_flower == "yes" %}
        "flower": flower_command,
{%- endif %}
    }
    return builders[kind](settings)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["api", "worker", "beat"{% if cookiecutter.use_flower == "yes" %}, "flower"{% endif %}])
    parser.add_argument("queue", nargs="?", choices=QUEUE_NAMES)
    parser.add_argument("--name", help="worker: the group's name (the node name's prefix)")
    parser.add_argument("--queues", help="worker: comma-separated queues to consume")
    parser.add_argument("--pool", choices=get_args(Pool), help="worker: execution pool")
    parser.add_argument("--concurrency", type=positive_int, help="worker: pool slots")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    options = build_parser().parse_args(argv)
    settings = get_settings()
    command = command_for(options.kind, options, settings)
    env = dict(os.environ)
{%- if cookiecutter.use_flower == "yes" %}
    if options.kind == "flower":
        # R35: Flower only behind authentication.
        password = settings.flower_password.get_secret_value()
        env["FLOWER_BASIC_AUTH"] = f"{settings.flower_user}:{password}"
{%- endif %}
    sys.stdout.flush()
    # Replaces this process by design: an argument list from command_for(), no shell.
    os.execvpe(command[0], command, env)  # noqa: S606  # nosec B606


if __name__ == "__main__":
    main()
