"""A local stand-in for Sentry's ingestion endpoint, for tests that send real events.

It takes what the SDK sends, `POST /api/<project>/envelope/` with a gzip or deflate body,
and keeps every item, read by the SDK's own envelope parser, for the tests to search; the
raw decoded bodies are kept as well, so a test can look for a value anywhere in what left
the process.

    with SentryReceiver() as sentry:
        env = {"SENTRY_DSN": sentry.dsn()}
        ...
        event = sentry.wait_for(lambda item: item.type == "event", timeout=10)

`mode` makes it misbehave for degradation tests: "hang" accepts connections and never
answers (until the mode changes or the receiver stops); "slow" answers after `delay`.
A threaded http.server.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from sentry_sdk.envelope import Envelope

from tests.harness.ports import LOOPBACK

Mode = Literal["answer", "hang", "slow"]
JSON_ITEMS = frozenset({"event", "transaction", "check_in", "session", "sessions", "client_report"})


@dataclass(frozen=True)
class Item:
    """One envelope item: its type, headers, payload (parsed when JSON) and raw bytes."""

    type: str
    headers: dict[str, Any]
    payload: dict[str, Any]
    raw: bytes

    @property
    def tags(self) -> dict[str, Any]:
        """The event's tags as a dict (the protocol allows a list of pairs too)."""
        return dict(self.payload.get("tags") or {})

    @property
    def trace_id(self) -> str | None:
        trace = (self.payload.get("contexts") or {}).get("trace") or {}
        value = trace.get("trace_id")
        return str(value) if value else None


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """Undo the Content-Encoding the SDK applied (gzip by default, deflate on request)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "identity":
        return body
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def parse_envelope(data: bytes) -> list[Item]:
    """The items of an envelope, read by the SDK's own parser; JSON payloads decoded."""
    items = []
    for item in Envelope.deserialize(data).items:
        raw = item.get_bytes()
        payload: dict[str, Any] = {}
        if item.type in JSON_ITEMS or item.headers.get("content_type") == "application/json":
            loaded = json.loads(raw) if raw.strip() else {}
            payload = loaded if isinstance(loaded, dict) else {"value": loaded}
        items.append(Item(str(item.type), dict(item.headers), payload, raw))
    return items


class SentryReceiver:
    """A threaded HTTP server on loopback that stores what the SDK sends it."""

    def __init__(self, port: int = 0) -> None:
        self.mode: Mode = "answer"
        self.delay = 5.0
        self._items: list[Item] = []
        self._bodies: list[bytes] = []
        self._errors: list[str] = []
        self._requests = 0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._released = threading.Event()
        self._server = ThreadingHTTPServer((LOOPBACK, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def dsn(self, key: str = "public", project: int = 1) -> str:
        return f"http://{key}@{LOOPBACK}:{self.port}/{project}"

    def start(self) -> SentryReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sentry-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # let hanging handlers go
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> SentryReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_mode(self, mode: Mode, delay: float | None = None) -> None:
        """Switch behaviour; leaving "hang" releases the requests held so far."""
        if delay is not None:
            self.delay = delay
        self.mode = mode
        if mode == "hang":
            self._released.clear()
        else:
            self._released.set()

    # --- what arrived -----------------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests received, answered or not."""
        with self._lock:
            return self._requests

    @property
    def errors(self) -> list[str]:
        """Bodies that could not be decoded (a test should expect none)."""
        with self._lock:
            return list(self._errors)

    def items(self, kind: str | None = None) -> list[Item]:
        with self._lock:
            return [item for item in self._items if kind is None or item.type == kind]

    def raw(self) -> bytes:
        """Every decoded body received so far, concatenated."""
        with self._lock:
            return b"\n".join(self._bodies)

    def find(self, match: Callable[[Item], bool], kind: str | None = None) -> list[Item]:
        return [item for item in self.items(kind) if match(item)]

    def wait_for(
        self,
        match: Callable[[Item], bool],
        timeout: float,
        what: str,
        *,
        kind: str | None = None,
        count: int = 1,
    ) -> list[Item]:
        """Wait until at least `count` items match; returns every match."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                found = [i for i in self._items if (kind is None or i.type == kind) and match(i)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    kinds = sorted({i.type for i in self._items})
                    raise TimeoutError(
                        f"{what}: {len(found)} of {count} after {timeout:.0f} s"
                        f" ({len(self._items)} items received, kinds {kinds},"
                        f" errors {self._errors[:3]})"
                    )
                self._arrived.wait(min(left, 0.5))

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items())

    # --- the endpoint ---------------------------------------------------------------------

    def _store(self, body: bytes, items: list[Item]) -> None:
        with self._arrived:
            self._bodies.append(body)
            self._items.extend(items)
            self._arrived.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the tests read what arrived, not an access log."""

            def do_POST(self) -> None:
                with receiver._lock:
                    receiver._requests += 1
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if receiver.mode == "hang":
                    receiver._released.wait()
                    self.close_connection = True
                    return
                if receiver.mode == "slow":
                    time.sleep(receiver.delay)
                if not re.fullmatch(r"/api/\d+/envelope/?", self.path):
                    self._answer(404, {"detail": f"no endpoint {self.path}"})
                    return
                try:
                    data = decode_body(body, self.headers.get("Content-Encoding"))
                    items = parse_envelope(data)
                except (ValueError, OSError, zlib.error) as exc:
                    with receiver._lock:
                        receiver._errors.append(f"{type(exc).__name__}: {exc}")
                    self._answer(400, {"detail": str(exc)})
                    return
                receiver._store(data, items)
                event_id = next((i.payload.get("event_id") for i in items if i.payload), None)
                self._answer(200, {"id": event_id})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                encoded = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

        return Handler
