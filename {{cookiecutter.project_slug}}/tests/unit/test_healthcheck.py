"""The container probes: a heartbeat file's age and an HTTP status, as exit codes."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from {{ cookiecutter.package_name }}.healthcheck import main, touch_heartbeat


def test_a_fresh_heartbeat_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    touch_heartbeat(str(path))
    assert main(["heartbeat", str(path), "--max-age", "30"]) == 0


def test_a_stale_or_missing_heartbeat_is_unhealthy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "heartbeat"
    assert main(["heartbeat", str(path), "--max-age", "30"]) == 1
    assert "no heartbeat" in capsys.readouterr().err
    touch_heartbeat(str(path))
    old = time.time() - 120
    os.utime(path, (old, old))
    assert main(["heartbeat", str(path), "--max-age", "30"]) == 1
    assert "120 s old" in capsys.readouterr().err


def test_touching_without_a_path_or_in_a_missing_directory_never_raises(tmp_path: Path) -> None:
    touch_heartbeat("")
    touch_heartbeat(str(tmp_path / "missing" / "heartbeat"))
    assert not (tmp_path / "missing").exists()


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(int(self.path.strip("/")))
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_probe_passes_on_2xx_only(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", f"{server}/200"]) == 0
    assert main(["http", f"{server}/503"]) == 1
    assert "answered 503" in capsys.readouterr().err


def test_http_probe_refuses_other_schemes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["http", "file:///etc/passwd"]) == 1
    assert "not an http(s) URL" in capsys.readouterr().err
