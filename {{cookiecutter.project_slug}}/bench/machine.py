"""What the figures were measured on: the machine, and the versions of everything involved."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.services import Services

# The Python packages whose versions change the figures.
PACKAGES = ("celery", "kombu", "redis", "sqlalchemy", "fastapi", "uvicorn", "gunicorn", "gevent")
# How each database server tells its version.
SERVER_VERSION_SQL = {"postgresql": "SHOW server_version", "mysql": "SELECT VERSION()"}


def _proc_field(path: str, name: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def machine() -> dict[str, Any]:
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cores": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(int(memory.split()[0]) / 1024**2, 1) if memory else None,
        "system": platform.platform(),
    }


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    answer = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)  # noqa: S607 - wrk from PATH
    return (answer.stdout or answer.stderr).splitlines()[0].strip()


def database_version(services: Services) -> str:
    if services.database_kind == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    rows = services.database.query(SERVER_VERSION_SQL[services.database_kind])
    return f"{services.database_kind} {rows[0][0]}"


def versions(services: Services) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        **{package: metadata.version(package) for package in PACKAGES},
        "database_server": database_version(services),
        "redis_server": services.redis_version(),
        "wrk": wrk_version(),
    }
