"""Finding the server binaries the harness runs, and what to do when one is missing.

The single place that decides: a missing binary SKIPS the test with the Debian package to
install, except under CI (`CI=true`), where it FAILS, so a CI run cannot pass by skipping.
"""

from __future__ import annotations

import glob
import os
import shutil
from typing import NoReturn

import pytest

# Debian keeps the PostgreSQL server binaries out of PATH, one directory per major version.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing_dependency(message: str) -> NoReturn:
    """Skip locally, fail in CI."""
    if running_in_ci():
        pytest.fail(f"{message} (CI=true: missing dependencies fail instead of skipping)")
    pytest.skip(message)


def _postgres_dirs() -> list[str]:
    def major(path: str) -> float:
        version = os.path.basename(os.path.dirname(path))
        try:
            return float(version)
        except ValueError:
            return 0.0

    return sorted(glob.glob(POSTGRES_BIN_GLOB), key=major, reverse=True)


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    for directory in _postgres_dirs():
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_binary(name: str, package: str) -> str:
    """The path of `name`, or skip/fail naming the Debian package that provides it."""
    path = find_binary(name)
    if path is None:
        missing_dependency(
            f"{name} not found: install the Debian package {package} (apt-get install -y {package})"
        )
    return path


def require_user(name: str, package: str) -> None:
    """A system account a server must run as (initdb refuses root)."""
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        missing_dependency(f"no system user {name!r}: install the Debian package {package}")
