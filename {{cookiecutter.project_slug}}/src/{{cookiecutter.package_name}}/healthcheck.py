"""Container health probes, cheap enough to run every few seconds.

    python -m {{ cookiecutter.package_name }}.healthcheck heartbeat PATH --max-age SECONDS
    python -m {{ cookiecutter.package_name }}.healthcheck http URL

`heartbeat` passes while PATH was touched within SECONDS: a worker touches it each time it
answers its own ping through the broker (observability/watchdog.py), beat on every tick
(ledger/beat.py). `http` passes on a 2xx answer (the API's /readyz). Exit 0 = healthy,
1 = unhealthy with the reason on stderr. Imports nothing heavy: no Celery, no settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence


def touch_heartbeat(path: str) -> None:
    """Record "alive now"; a no-op without a path. Never raises: liveness is best effort."""
    if not path:
        return
    try:
        with open(path, "a"):
            pass
        os.utime(path)
    except OSError:
        pass


def heartbeat_age(path: str) -> float:
    return time.time() - os.stat(path).st_mtime


def check_heartbeat(path: str, max_age: float) -> str | None:
    try:
        age = heartbeat_age(path)
    except OSError as exc:
        return f"no heartbeat at {path}: {exc.strerror}"
    if age > max_age:
        return f"heartbeat {age:.0f} s old (limit {max_age:.0f} s)"
    return None


def check_http(url: str, timeout: float) -> str | None:
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url}"
    try:
        # http(s) only (checked above): no file:// or custom schemes.
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310  # nosec B310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url} unreachable: {exc}"
    return None if 200 <= status < 300 else f"{url} answered {status}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    probes = parser.add_subparsers(dest="probe", required=True)
    heartbeat = probes.add_parser("heartbeat", help="a file touched recently enough")
    heartbeat.add_argument("path")
    heartbeat.add_argument("--max-age", type=float, required=True, help="seconds")
    http = probes.add_parser("http", help="a 2xx answer")
    http.add_argument("url")
    http.add_argument("--timeout", type=float, default=5.0, help="seconds")
    options = parser.parse_args(argv)
    if options.probe == "heartbeat":
        problem = check_heartbeat(options.path, options.max_age)
    else:
        problem = check_http(options.url, options.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
