"""The monitoring configuration, checked offline (R36, R37, R44).

promtool and amtool validate the files exactly as the compose stack mounts them; the alert
rules run against their unit tests (deploy/prometheus/alerts.test.yml), and every alert has
a section in the runbook (docs/OPERATIONS.md); the dashboard's queries parse and use the
provisioned data source. The binaries come from the Debian packages prometheus and
prometheus-alertmanager: missing, they skip locally and fail under CI=true.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.binaries import require_binary

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
ALERTMANAGER_CONFIG = PROMETHEUS_DIR / "alertmanager.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
RUNBOOK = ROOT / "docs" / "OPERATIONS.md"

# Where docker-compose.yml mounts deploy/prometheus/ in the Prometheus container.
CONTAINER_RULES_PATH = "/etc/prometheus/alerts.yml"
# Compose secrets appear under this directory in the container.
CONTAINER_SECRETS_DIR = "/run/secrets/"

SCRAPE_JOBS = {
    "prometheus",
    "alertmanager",
    "api",
    "celery-exporter",
    "redis",
{%- if cookiecutter.use_flower == "yes" %}
    "flower",
{%- endif %}
}
# Jobs behind basic auth; the password comes from a compose secret file.
AUTHENTICATED_JOBS: set[str] = {% if cookiecutter.use_flower == "yes" %}{"flower"}{% else %}set(){% endif %}
# The Redis nodes redis_exporter scrapes (docker-compose.yml), one target each.
REDIS_NODES = {% if cookiecutter.redis_mode == "sentinel" %}{"redis-master", "redis-replica"}{% else %}{"redis"}{% endif %}
# R37: the four alerts the checklist asks for by name.
CHECKLIST_ALERTS = {
    "CeleryTaskFailureRateHigh",
    "CeleryQueueBacklogHigh",
    "CeleryWorkerDown",
    "CeleryTaskRuntimeHigh",
}
RECEIVERS = {"webhook": "webhook_configs", "email": "email_configs", "slack": "slack_configs"}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}:\n{result.stdout}\n{result.stderr}"


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(ALERT_RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def markdown_anchors(path: Path) -> set[str]:
    """The anchors a Markdown renderer gives the headings (code blocks skipped)."""
    anchors: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.strip().replace(" ", "-"))
    return anchors


@pytest.mark.reliability("R36")
def test_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The config as mounted; only the container-only paths point at local files."""
    promtool = require_binary("promtool", "prometheus")
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [CONTAINER_RULES_PATH]
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    targets = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == SCRAPE_JOBS
    assert {name for name, job in jobs.items() if "basic_auth" in job} == AUTHENTICATED_JOBS

    text = PROMETHEUS_CONFIG.read_text(encoding="utf-8")
    text = text.replace(CONTAINER_RULES_PATH, str(ALERT_RULES))
    for name in AUTHENTICATED_JOBS:
        # A compose secret, never a password in the file itself.
        basic_auth = jobs[name]["basic_auth"]
        assert "password" not in basic_auth, name
        password_file = basic_auth["password_file"]
        assert password_file.startswith(CONTAINER_SECRETS_DIR), password_file
        local = tmp_path / Path(password_file).name
        local.write_text("secret\n", encoding="utf-8")
        text = text.replace(password_file, str(local))
    checked = tmp_path / "prometheus.yml"
    checked.write_text(text, encoding="utf-8")
    assert CONTAINER_RULES_PATH not in text

    assert_ok(run(promtool, "check", "config", str(checked)))


@pytest.mark.reliability("R36")
def test_every_redis_node_is_a_target_of_the_one_redis_exporter(tmp_path: Path) -> None:
    """The multi-target pattern: every node is scraped through redis_exporter's
    /scrape?target= and keeps its own instance label (promtool applies the relabeling)."""
    promtool = require_binary("promtool", "prometheus")
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    job_only = tmp_path / "redis-job.yml"
    job_only.write_text(yaml.safe_dump({"scrape_configs": [jobs["redis"]]}), encoding="utf-8")
    result = run(promtool, "check", "service-discovery", str(job_only), "redis")
    assert_ok(result)
    targets = [target["labels"] for target in json.loads(result.stdout)]
    assert {labels["instance"] for labels in targets} == REDIS_NODES
    for labels in targets:
        assert labels["__address__"] == "redis-exporter:9121", labels
        assert labels["__metrics_path__"] == "/scrape", labels
        assert labels["__param_target"] == f"redis://{labels['instance']}:6379", labels


@pytest.mark.reliability("R37")
def test_alert_rules_pass_promtool_check() -> None:
    promtool = require_binary("promtool", "prometheus")
    assert_ok(run(promtool, "check", "rules", str(ALERT_RULES)))


@pytest.mark.reliability("R37")
def test_alert_rule_unit_tests_pass() -> None:
    promtool = require_binary("promtool", "prometheus")
    result = run(promtool, "test", "rules", str(ALERT_TESTS))
    assert_ok(result)
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.reliability("R37")
def test_every_alert_is_complete_tested_both_ways_and_has_a_runbook_section() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), names
    assert set(names) >= CHECKLIST_ALERTS

    suite = load_yaml(ALERT_TESTS)
    assert suite["rule_files"] == [ALERT_RULES.name]
    cases = [case for test in suite["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert not set(names) - firing, f"alerts without a firing test: {set(names) - firing}"
    assert not set(names) - quiet, f"alerts without a non-firing test: {set(names) - quiet}"
    assert firing | quiet <= set(names), "tests name alerts that do not exist"

    anchors = markdown_anchors(RUNBOOK)
    for rule in rules:
        name = rule["alert"]
        assert rule.get("for"), f"{name}: no `for:`"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        page, _, anchor = annotations["runbook_url"].partition("#")
        assert page == "docs/OPERATIONS.md", name
        assert anchor == name.lower(), name
        assert anchor in anchors, f"{name}: no section #{anchor} in docs/OPERATIONS.md"


@pytest.mark.reliability("R44")
def test_alertmanager_config_passes_amtool_and_routes_to_every_receiver() -> None:
    amtool = require_binary("amtool", "prometheus-alertmanager")
    assert_ok(run(amtool, "check-config", str(ALERTMANAGER_CONFIG)))

    config = load_yaml(ALERTMANAGER_CONFIG)
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    for name, integration in RECEIVERS.items():
        assert receivers.get(name, {}).get(integration), f"receiver {name}: no {integration}"
    assert {
        "source_matchers": ['alertname="CeleryNoWorkers"'],
        "target_matchers": ['alertname="CeleryWorkerDown"'],
    } in config["inhibit_rules"]

    # Which receivers an alert reaches, by severity.
    expected = {"critical": "webhook,email,slack", "warning": "webhook,slack"}
    for severity, receivers_list in expected.items():
        assert_ok(
            run(
                amtool,
                "config",
                "routes",
                "test",
                f"--config.file={ALERTMANAGER_CONFIG}",
                f"--verify.receivers={receivers_list}",
                f"severity={severity}",
                "alertname=CeleryNoWorkers",
            )
        )


@pytest.mark.reliability("R36")
def test_grafana_dashboard_uses_the_provisioned_datasource_and_valid_queries(
    tmp_path: Path,
) -> None:
    datasources = load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml")
    (datasource,) = datasources["datasources"]
    assert (datasource["uid"], datasource["url"]) == ("prometheus", "http://prometheus:9090")
    providers = load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml")
    assert [p["options"]["path"] for p in providers["providers"]] == ["/var/lib/grafana/dashboards"]

    dashboard = json.loads((GRAFANA_DIR / "dashboards" / "celery.json").read_text("utf-8"))
    panels = dashboard["panels"]
    assert len(panels) >= 8
    expressions: list[str] = []
    for panel in panels:
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
            expressions.append(target["expr"])

    # Every query parses: checked as recording rules, Grafana's interval variables replaced.
    promtool = require_binary("promtool", "prometheus")
    rules = [
        {"record": f"dashboard:query:{index}", "expr": expr.replace("$__rate_interval", "1m")}
        for index, expr in enumerate(expressions)
    ]
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run(promtool, "check", "rules", str(queries)))
