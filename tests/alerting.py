"""Alert delivery for the container tier: a webhook receiver and fast test copies of the
monitoring configuration.

The receiver is a stdlib HTTP server on the host, bound to the gateway address of the
stack's compose network: the Alertmanager container reaches it there, nothing else
outside the host does. The copies keep every rule expression and threshold of the baked
project's deploy/prometheus/ files and change only how soon things happen (`for:`,
scrape and evaluation intervals, Alertmanager's grouping delays) and where the `webhook`
receiver posts. They are mounted through a compose override file passed with `-f`.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# How soon things happen in the test copies (production: for 2m..15m, 15 s intervals,
# group_wait 30s, group_interval 5m).
TEST_FOR = "10s"
TEST_INTERVAL = "5s"
TEST_SCRAPE_TIMEOUT = "4s"
TEST_GROUP_WAIT = "1s"
TEST_GROUP_INTERVAL = "2s"

FOR_LINE = re.compile(r"^(\s+)for: \S+$", re.MULTILINE)


@dataclass(frozen=True)
class Delivery:
    """One alert of one webhook notification, with the time it reached the receiver."""

    received_at: float  # epoch seconds
    status: str  # the alert's own status: firing | resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    notification: dict[str, Any]  # the whole body Alertmanager posted


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        received_at = time.time()
        try:
            notification = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        self.server.record(self.path, received_at, notification)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the deliveries are kept; no access log on stderr


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.changed = threading.Condition()
        self.deliveries: list[Delivery] = []
        self.paths: list[str] = []

    def record(self, path: str, received_at: float, notification: dict[str, Any]) -> None:
        with self.changed:
            self.paths.append(path)
            for alert in notification.get("alerts", []):
                self.deliveries.append(
                    Delivery(
                        received_at=received_at,
                        status=str(alert.get("status", "")),
                        labels=dict(alert.get("labels", {})),
                        annotations=dict(alert.get("annotations", {})),
                        notification=notification,
                    )
                )
            self.changed.notify_all()


class AlertReceiver:
    """A webhook endpoint on `host` (an ephemeral port), serving in a thread."""

    def __init__(self, host: str) -> None:
        self._server = _Server((host, 0))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def __enter__(self) -> AlertReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def deliveries(self) -> list[Delivery]:
        with self._server.changed:
            return list(self._server.deliveries)

    @property
    def paths(self) -> list[str]:
        with self._server.changed:
            return list(self._server.paths)

    def wait(
        self, alertname: str, status: str, after: float, timeout: float, **labels: str
    ) -> Delivery | None:
        """The first delivery of `alertname` in `status` (and `labels`) received after
        `after` (epoch seconds); None when none came within `timeout`."""
        deadline = time.monotonic() + timeout

        def found() -> Delivery | None:
            for delivery in self._server.deliveries:
                if (
                    delivery.received_at >= after
                    and delivery.status == status
                    and delivery.labels.get("alertname") == alertname
                    and all(delivery.labels.get(key) == value for key, value in labels.items())
                ):
                    return delivery
            return None

        with self._server.changed:
            while (delivery := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._server.changed.wait(timeout=left)
            return delivery

    def summary(self) -> list[str]:
        """`status alertname labels` of everything received, for assertion messages."""
        return [
            f"{delivery.status} {delivery.labels.get('alertname')} {delivery.labels}"
            for delivery in self.deliveries
        ]


def alert_rules(alerts_file: Path) -> dict[str, dict[str, Any]]:
    """alert name -> its rule (expr, for, labels, annotations) in a rules file."""
    groups = yaml.safe_load(alerts_file.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def fast_rules(text: str) -> str:
    """The rules file with every `for:` at TEST_FOR, and nothing else changed."""
    return FOR_LINE.sub(rf"\1for: {TEST_FOR}", text)


def fast_prometheus(text: str) -> str:
    config = yaml.safe_load(text)
    config["global"].update(
        scrape_interval=TEST_INTERVAL,
        evaluation_interval=TEST_INTERVAL,
        scrape_timeout=TEST_SCRAPE_TIMEOUT,
    )
    return yaml.safe_dump(config, sort_keys=False)


def fast_alertmanager(text: str, webhook_url: str) -> str:
    """The routes and receivers as they are, the `webhook` receiver posting to
    `webhook_url`, and groups notified after TEST_GROUP_WAIT / TEST_GROUP_INTERVAL."""
    config = yaml.safe_load(text)
    config["route"].update(group_wait=TEST_GROUP_WAIT, group_interval=TEST_GROUP_INTERVAL)
    webhooks = [
        hook
        for receiver in config["receivers"]
        if receiver["name"] == "webhook"
        for hook in receiver.get("webhook_configs", [])
    ]
    assert webhooks, "alertmanager.yml has no `webhook` receiver with a webhook_config"
    for hook in webhooks:
        hook["url"] = webhook_url
    return yaml.safe_dump(config, sort_keys=False)


def fast_monitoring_override(project: Path, workdir: Path, webhook_url: str) -> Path:
    """Write the test copies of the project's deploy/prometheus/ files under `workdir`
    and a compose override mounting them; the override file's path."""
    source = project / "deploy" / "prometheus"
    prometheus_dir = workdir / "prometheus"
    shutil.copytree(source, prometheus_dir)
    (prometheus_dir / "alerts.yml").write_text(fast_rules((source / "alerts.yml").read_text()))
    (prometheus_dir / "prometheus.yml").write_text(
        fast_prometheus((source / "prometheus.yml").read_text())
    )
    alertmanager_file = workdir / "alertmanager.yml"
    alertmanager_file.write_text(
        fast_alertmanager((source / "alertmanager.yml").read_text(), webhook_url)
    )
    # Both images run as `nobody`; pytest's temporary directories are private (0700).
    for path in (workdir, prometheus_dir, *prometheus_dir.rglob("*"), alertmanager_file):
        path.chmod(0o755 if path.is_dir() else 0o644)
    override = {
        "services": {
            "prometheus": {
                "volumes": [
                    {
                        "type": "bind",
                        "source": str(prometheus_dir),
                        "target": "/etc/prometheus",
                        "read_only": True,
                    }
                ]
            },
            "alertmanager": {
                "volumes": [
                    {
                        "type": "bind",
                        "source": str(alertmanager_file),
                        "target": "/etc/alertmanager/alertmanager.yml",
                        "read_only": True,
                    }
                ]
            },
        }
    }
    path = workdir / "docker-compose.alerting.yml"
    path.write_text(json.dumps(override, indent=2) + "\n")  # JSON is YAML
    return path


def changed_lines(original: str, copy: str) -> Iterator[tuple[str, str]]:
    """(original, copy) pairs of the lines that differ; the files must have as many."""
    before, after = original.splitlines(), copy.splitlines()
    assert len(before) == len(after), "the copy has a different number of lines"
    return ((old, new) for old, new in zip(before, after, strict=True) if old != new)
