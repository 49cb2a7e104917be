"""HTTP load for a fixed time: `wrk --latency` (Debian package wrk), or a Python loader.

POST bodies go through bench/post_task.lua. Without wrk, a bounded loader (one thread and
one keep-alive httpx client per connection) reports the same figures, slower to saturate
a server; under CI=true a missing wrk is an error instead, so CI always measures with wrk.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.harness.binaries import running_in_ci

POST_SCRIPT = Path(__file__).resolve().parent / "post_task.lua"
# Must match the body in post_task.lua: both apps accept it.
POST_BODY = {"name": "demo.echo", "kwargs": {"message": "x"}}
# Two wrk threads: one per core of the machines this runs on.
WRK_THREADS = 2
# A request slower than this counts as a timeout (wrk's default of 2 s would hide a
# 5 s pool wait behind a socket error).
REQUEST_TIMEOUT_SECONDS = 10
# wrk's duration suffixes, in milliseconds.
UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class Load:
    loader: str
    requests: int
    seconds: float
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def loader_name() -> str:
    """`wrk` if installed; else `python`, except under CI where wrk must be there."""
    if shutil.which("wrk"):
        return "wrk"
    if running_in_ci():
        raise SystemExit("wrk not found: apt-get install -y wrk (CI=true needs it)")
    print("bench: wrk not found (apt-get install -y wrk): using the Python loader", flush=True)
    return "python"


def run_load(
    url: str,
    *,
    post: bool,
    connections: int,
    seconds: float,
    headers: Mapping[str, str] | None = None,
) -> Load:
    """`headers` go with every request (e.g. the API key)."""
    sent = dict(headers or {})
    if loader_name() == "wrk":
        return run_wrk(url, post=post, connections=connections, seconds=seconds, headers=sent)
    return run_python(url, post=post, connections=connections, seconds=seconds, headers=sent)


# --- wrk ------------------------------------------------------------------------------------


def run_wrk(
    url: str, *, post: bool, connections: int, seconds: float, headers: dict[str, str]
) -> Load:
    command = [
        "wrk",
        f"--threads={min(WRK_THREADS, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={REQUEST_TIMEOUT_SECONDS}s",
        "--latency",
        *(f"--header={name}: {value}" for name, value in headers.items()),
    ]
    if post:
        command.append(f"--script={POST_SCRIPT}")
    output = subprocess.run(  # noqa: S603 - wrk with our own arguments
        [*command, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    return parse_wrk(output)


def _milliseconds(text: str) -> float:
    """wrk's durations: 812.00us, 3.10ms, 1.20s, 1.00m."""
    found = re.fullmatch(r"([\d.]+)([a-z]+)", text.strip())
    if found is None or found.group(2) not in UNITS_MS:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(found.group(1)) * UNITS_MS[found.group(2)]


def parse_wrk(output: str) -> Load:
    """The figures of `wrk --latency`'s report."""
    percentiles = {
        int(p): _milliseconds(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.M)
    }
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None or not {50, 90, 99} <= percentiles.keys():
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        loader="wrk",
        requests=int(total.group(1)),
        seconds=_milliseconds(total.group(2) + total.group(3)) / 1000,
        requests_per_second=float(rate.group(1)),
        p50_ms=percentiles[50],
        p90_ms=percentiles[90],
        p99_ms=percentiles[99],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


# --- the Python loader ----------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float]
    non_2xx: int = 0
    errors: int = 0


def _connection(
    url: str,
    post: bool,
    headers: dict[str, str],
    deadline: float,
    tally: _Tally,
    lock: threading.Lock,
) -> None:
    latencies: list[float] = []
    non_2xx = errors = 0
    with httpx.Client(timeout=REQUEST_TIMEOUT_SECONDS, headers=headers) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                response = client.post(url, json=POST_BODY) if post else client.get(url)
            except httpx.HTTPError:
                errors += 1
                continue
            latencies.append(1000 * (time.perf_counter() - started))
            non_2xx += not 200 <= response.status_code < 300
    with lock:
        tally.latencies.extend(latencies)
        tally.non_2xx += non_2xx
        tally.errors += errors


def _percentile(ordered: list[float], percent: int) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]


def run_python(
    url: str, *, post: bool, connections: int, seconds: float, headers: dict[str, str]
) -> Load:
    tally, lock = _Tally(latencies=[]), threading.Lock()
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=_connection,
            args=(url, post, headers, started + seconds, tally, lock),
        )
        for _ in range(connections)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ordered = sorted(tally.latencies)
    return Load(
        loader="python",
        requests=len(ordered),
        seconds=round(elapsed, 3),
        requests_per_second=round(len(ordered) / elapsed, 2),
        p50_ms=_percentile(ordered, 50),
        p90_ms=_percentile(ordered, 90),
        p99_ms=_percentile(ordered, 99),
        non_2xx=tally.non_2xx,
        socket_errors=tally.errors,
    )
