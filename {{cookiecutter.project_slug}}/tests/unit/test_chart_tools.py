"""The Helm chart through the tools a cluster's admission and review would run, offline.

- `helm lint --strict` accepts every value set of VALUE_SETS;
- every object those value sets render passes `kubernetes-validate --strict` for each of
  KUBERNETES_VERSIONS (the oldest and the newest minor release the chart is checked on);
- the custom resources it skips (KEDA{% if cookiecutter.use_celery_exporter == "yes" %}, Prometheus Operator{% endif %}) pass their CRDs' schemas,
  vendored in chart_schemas/ (README.md there says where from), with unknown fields refused
  as the API server's strict field validation refuses them;
- checkov's Kubernetes checks pass on all value sets at once, with zero failed checks; the
  few skipped ones are SKIPPED_CHECKS, each with its reason, the same as the "Checks
  skipped" table of the chart's README;
{%- if cookiecutter.use_celery_exporter == "yes" %}
- the rendered PrometheusRule is deploy/prometheus/alerts.yml exactly, and its rules pass
  `promtool check rules` and the unit tests of deploy/prometheus/alerts.test.yml;
{%- endif %}
- the files the chart ships as copies are byte-identical to their originals in deploy/.

kubernetes-validate and jsonschema are dev dependencies; checkov runs isolated, through
`uv tool run` at CHECKOV_VERSION (it is too heavy for the project's own environment).
{%- if cookiecutter.use_celery_exporter == "yes" %}
promtool comes from the Debian package prometheus.
{%- endif %}
A missing tool skips locally and fails under CI=true.
The figures (checks passed / failed / skipped, objects validated per Kubernetes version)
are written to tests/unit/results/chart-tools.json.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.harness.binaries import missing_dependency{% if cookiecutter.use_celery_exporter == "yes" %}, require_binary{% endif %}
from tests.harness.chart import CHART_DIR, NAMESPACE, Obj, RenderFailed, helm, render

try:
    import kubernetes_validate  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - a dev dependency
    kubernetes_validate = None

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = Path(__file__).resolve().parent / "chart_schemas"
RESULTS_FILE = ROOT / "tests" / "unit" / "results" / "chart-tools.json"
CHART_README = CHART_DIR / "README.md"
{%- if cookiecutter.use_celery_exporter == "yes" %}
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
{%- endif %}

# The chart's files that must stay copies of the originals the compose stack uses.
SHIPPED_COPIES: dict[str, Path] = {
{%- if cookiecutter.use_celery_exporter == "yes" %}
    "files/prometheus/alerts.yml": ROOT / "deploy" / "prometheus" / "alerts.yml",
{%- endif %}
    "files/redis/persistence.conf": ROOT / "deploy" / "redis" / "persistence.conf",
    "files/redis/users.acl": ROOT / "deploy" / "redis" / "users.acl",
}

#: Exact releases bundled by kubernetes-validate: the oldest and newest minors checked.
KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")

#: Run through `uv tool run --from checkov==CHECKOV_VERSION`, never installed in the project.
CHECKOV_VERSION = "3.3.30"
CHECKOV_HINT = (
    "checkov runs isolated through uv: `uv tool run --from checkov=={version} checkov`"
    " (needs uv, which `uv run` provides, and the package index reachable once)"
)

#: checkov checks not run, each with why it does not apply to this chart. The chart's
#: README carries the same rows in its "Checks skipped" table (asserted below).
SKIPPED_CHECKS: dict[str, str] = {
    "CKV_K8S_43": (
        "Image should use digest: the images are `image.repository` + `image.tag` values;"
        " the application image is built and pushed by each project, so the chart cannot"
        " pin a digest"
    ),
    "CKV_K8S_15": (
        "Image pull policy should be Always: `*.image.pullPolicy` is a value, IfNotPresent by"
        " default for versioned tags; Always would make every pod start depend on the"
        " registry"
    ),
    "CKV_K8S_35": (
        "Prefer secrets as files: the application pods and the database do (<NAME>_FILE);"
{%- if cookiecutter.use_celery_exporter == "yes" %}
        " the exporters read their Redis password only from a variable, and"
{%- endif %}
        " the Redis pods' scripts take the users' passwords as `secretKeyRef` variables,"
        " never as text"
    ),
}

#: The custom resources the chart renders: (apiVersion, kind) -> vendored schema file.
CRD_SCHEMAS: dict[tuple[str, str], str] = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_scaledobject.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_v1alpha1_triggerauthentication.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_v1_prometheusrule.json",
}
#: KEDA's default maxReplicaCount, used by the ScaledObject CRD's one CEL rule.
KEDA_DEFAULT_MAX_REPLICAS = 100

#: The worker groups of values.yaml (one ScaledObject or HPA each when they autoscale).
WORKER_GROUPS = len(
    yaml.safe_load((CHART_DIR / "values.yaml").read_text("utf-8"))["workers"]["groups"]
)
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "internal-database": {"database": {"internal": {"enabled": True}, "external": {"url": ""}}},
    # Every group through KEDA, one of them from zero; then every group through an HPA.
    "workers-keda": {
        "workers": {
            "defaults": {"autoscaling": {"mode": "keda"}},
            "groups": {"low": {"autoscaling": {"minReplicas": 0}}},
        }
    },
    "workers-hpa": {"workers": {"defaults": {"autoscaling": {"mode": "hpa"}}}},
    "ingress-api-autoscaling": {
        "api": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "tls": [{"secretName": "api-tls", "hosts": ["api.example.com"]}],
                "hosts": [
                    {"host": "api.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
                ],
            },
            "autoscaling": {"enabled": True},
        }
    },
    "no-network-policies": {"networkPolicies": {"enabled": False}},
{%- if cookiecutter.use_celery_exporter == "yes" %}
    "monitoring": {
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}
    },
{%- endif %}
    "external-redis": {
        "redis": {
            "enabled": False,
            "external": {
                "sentinels": ["sentinel-0.example.com:26379", "sentinel-1.example.com:26379"]
            },
            "auth": {"existingSecret": "redis-credentials"},
        }
    },
    # TLS everywhere with a client certificate, KEDA included.
    "redis-tls": {
        "redis": {
            "tls": {"enabled": True, "secretName": "redis-tls", "clientSecretName": "redis-client"}
        },
        "workers": {"groups": {"low": {"autoscaling": {"mode": "keda"}}}},
    },
}

Figures = dict[str, Any]


# --- shared renders and figures ---------------------------------------------------------
@pytest.fixture(scope="module")
def figures() -> Iterator[Figures]:
    """What the tools counted, written to RESULTS_FILE once the module's tests are done."""
    numbers: Figures = {}
    yield numbers
    if numbers:
        RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
        document = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **numbers}
        RESULTS_FILE.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def in_parallel(work: Mapping[str, Any], job: Any) -> dict[str, Any]:
    """job(value set) for every value set, two helm processes at a time (helm is Go: the
    threads only wait)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(job, values) for name, values in work.items()}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    """Every value set's objects, rendered once for the whole module."""
    return in_parallel(VALUE_SETS, render)


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def run(command: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=300, cwd=cwd
    )


# --- helm lint --------------------------------------------------------------------------
def test_helm_lint_strict_accepts_every_value_set(figures: Figures) -> None:
    def lint(values: dict[str, Any]) -> str:
        try:
            return helm("lint", "--strict", values=values)
        except RenderFailed as exc:
            return f"FAILED\n{exc}"

    outputs = in_parallel(VALUE_SETS, lint)
    failed = {name: out for name, out in outputs.items() if out.startswith("FAILED")}
    assert not failed, "\n\n".join(f"helm lint --strict, {n}:\n{o}" for n, o in failed.items())
    for name, out in outputs.items():
        assert "0 chart(s) failed" in out, f"{name}:\n{out}"
    figures["helm_lint"] = {"value_sets": sorted(outputs), "failed": 0}


# --- kubernetes-validate ------------------------------------------------------------------
def unique_objects(rendered: Mapping[str, list[Obj]]) -> dict[str, tuple[Obj, list[str]]]:
    """Each distinct object once (most are the same in every value set), with the value
    sets that render it."""
    seen: dict[str, tuple[Obj, list[str]]] = {}
    for name, objects in rendered.items():
        for obj in objects:
            key = json.dumps(obj, sort_keys=True)
            seen.setdefault(key, (obj, []))[1].append(name)
    return seen


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_kubernetes_validate_strict(
    rendered: dict[str, list[Obj]], version: str, figures: Figures
) -> None:
    """Built-in kinds against the Kubernetes release's own schemas, unknown fields refused.
    Only the custom resources of CRD_SCHEMAS may lack a schema there (they are checked
    against their CRDs below); any other kind or apiVersion without one, e.g. an API
    version the release no longer serves, fails."""
    if kubernetes_validate is None:
        missing_dependency("kubernetes-validate not installed: it is a dev dependency (uv sync)")
    bundled = kubernetes_validate.utils.all_versions()
    assert version in bundled, f"kubernetes-validate bundles no {version}: {sorted(set(bundled))}"

    problems: list[str] = []
    validated: Counter[str] = Counter()
    custom = 0
    unique = unique_objects(rendered)
    for obj, sets in unique.values():
        where = f"{label(obj)} ({', '.join(sets)})"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
                custom += 1
            else:
                problems.append(f"{where}: Kubernetes {version} serves no {obj['apiVersion']}")
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path) or "(object)"
            problems.append(f"{where}: {path}: {exc.message}")
        else:
            validated[obj["kind"]] += 1
    assert not problems, f"kubernetes-validate --strict {version}:\n" + "\n".join(problems)
    assert validated, "nothing was validated"
    figures.setdefault("kubernetes_validate", {})[version] = {
        "objects_rendered": sum(len(objects) for objects in rendered.values()),
        "distinct_objects": len(unique),
        "validated": sum(validated.values()),
        "validated_by_kind": dict(sorted(validated.items())),
        "custom_resources_left_to_crd_schemas": custom,
    }


# --- custom resources against their CRDs ------------------------------------------------
def python_pattern(pattern: str) -> str:
    """A CRD's (Go, RE2) pattern for Python's re: RE2 takes a flag group such as `(?i)`
    anywhere, Python only at the start (the same meaning when the pattern has one)."""
    flags = [match.group() for match in re.finditer(r"\(\?[a-z]+\)", pattern)]
    if len(flags) == 1 and not pattern.startswith(flags[0]):
        return flags[0] + pattern.replace(flags[0], "", 1)
    return pattern


def closed(schema: Any) -> Any:
    """The CRD schema as the API server applies it: unknown fields refused where the CRD
    lists the fields (the server drops or, with strict field validation, refuses them;
    plain JSON Schema allows them), and patterns in Python's dialect."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = python_pattern(out["pattern"])
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / CRD_SCHEMAS[(api_version, kind)]).read_text("utf-8"))
    strict = closed(schema)
    jsonschema.Draft7Validator.check_schema(strict)
    return jsonschema.Draft7Validator(strict)


def crd_errors(obj: Obj) -> list[str]:
    """Why the API server would refuse the custom resource (its CRD's schema, and the
    ScaledObject's one CEL rule, which JSON Schema cannot express)."""
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    errors = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(object)'}: {error.message}"
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
    if obj["kind"] == "ScaledObject":
        spec = obj.get("spec", {})
        low = spec.get("minReplicaCount")
        high = spec.get("maxReplicaCount", KEDA_DEFAULT_MAX_REPLICAS)
        if low is not None and isinstance(high, int) and low > high:
            errors.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    return errors


#: value set -> how many of each custom resource it must render.
EXPECTED_CUSTOM_RESOURCES: dict[str, dict[str, int]] = {
    "workers-keda": {"ScaledObject": WORKER_GROUPS, "TriggerAuthentication": 1},
    "redis-tls": {"ScaledObject": 1, "TriggerAuthentication": 1},
{%- if cookiecutter.use_celery_exporter == "yes" %}
    # One ServiceMonitor each: the metrics Deployment, the API's /metrics, redis_exporter.
    "monitoring": {"ServiceMonitor": 3, "PrometheusRule": 1},
{%- endif %}
}


def test_custom_resources_pass_their_crd_schemas(
    rendered: dict[str, list[Obj]], figures: Figures
) -> None:
    problems: list[str] = []
    checked: Counter[str] = Counter()
    for name, objects in rendered.items():
        custom = [obj for obj in objects if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS]
        counts = Counter(obj["kind"] for obj in custom)
        expected = EXPECTED_CUSTOM_RESOURCES.get(name, {})
        assert counts == Counter(expected), f"{name}: rendered {dict(counts)}, want {expected}"
        for obj in custom:
            problems += [f"{name}: {label(obj)}: {error}" for error in crd_errors(obj)]
            checked[obj["kind"]] += 1
    assert not problems, "custom resources refused by their CRDs:\n" + "\n".join(problems)
    figures["crd_schemas"] = {"validated_by_kind": dict(sorted(checked.items()))}


def test_vendored_crd_schemas_refuse_broken_objects(rendered: dict[str, list[Obj]]) -> None:
    """The schemas are not vacuous: each refuses a rendered object broken on purpose."""

    def broken(kind: str, value_set: str) -> Obj:
        obj = next(o for o in rendered[value_set] if o["kind"] == kind)
        assert not crd_errors(obj), crd_errors(obj)
        return copy.deepcopy(obj)

    scaled = broken("ScaledObject", "workers-keda")
    del scaled["spec"]["scaleTargetRef"]
    assert any("'scaleTargetRef' is a required property" in e for e in crd_errors(scaled))

    scaled = broken("ScaledObject", "workers-keda")
    scaled["spec"]["triggers"][0]["metadata"]["listLength"] = 20  # must be a string
    assert any("triggers.0.metadata.listLength" in e for e in crd_errors(scaled))

    scaled = broken("ScaledObject", "workers-keda")
    scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"] = 5, 2
    assert any("minReplicaCount must be less" in e for e in crd_errors(scaled))

    scaled = broken("ScaledObject", "workers-keda")
    scaled["spec"]["pollingIntervall"] = 15  # an unknown field
    assert any("pollingIntervall" in e for e in crd_errors(scaled))

    auth = broken("TriggerAuthentication", "workers-keda")
    del auth["spec"]["secretTargetRef"][0]["key"]
    assert any("'key' is a required property" in e for e in crd_errors(auth))
{%- if cookiecutter.use_celery_exporter == "yes" %}

    monitor = broken("ServiceMonitor", "monitoring")
    monitor["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    assert any("endpoints.0.interval" in e for e in crd_errors(monitor))

    rule = broken("PrometheusRule", "monitoring")
    del rule["spec"]["groups"][0]["name"]
    assert any("'name' is a required property" in e for e in crd_errors(rule))
{%- endif %}


# --- checkov ------------------------------------------------------------------------------
def readme_skipped_checks() -> dict[str, str]:
    """The rows of the chart README's "Checks skipped" table: check id -> reason."""
    text = CHART_README.read_text("utf-8")
    match = re.search(r"^#+\s*Checks skipped\s*$(.*?)(?=^#|\Z)", text, re.M | re.S | re.I)
    assert match, f'{CHART_README.name}: no "Checks skipped" section'
    rows: dict[str, str] = {}
    for line in match.group(1).splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and len(cells) >= 2:
            check = cells[0].strip("`")
            if re.fullmatch(r"CKV\d?_[A-Z0-9_]+", check):
                rows[check] = cells[1]
    return rows


def test_chart_readme_lists_exactly_the_skipped_checks() -> None:
    rows = readme_skipped_checks()
    assert set(rows) == set(SKIPPED_CHECKS), (
        f"README 'Checks skipped' table: {sorted(rows)}; the test skips {sorted(SKIPPED_CHECKS)}"
    )
    for check, reason in rows.items():
        assert reason, f"README: {check} has no reason"


def checkov_reports(output: str) -> list[dict[str, Any]]:
    data = json.loads(output)
    reports = data if isinstance(data, list) else [data]
    assert all(isinstance(report, dict) for report in reports), output[:500]
    return reports


def test_checkov_passes_every_value_set(
    rendered: dict[str, list[Obj]], tmp_path: Path, figures: Figures
) -> None:
    """One checkov run over every value set's manifests (its start-up dominates). Each
    object gets the release's namespace, as `helm install --namespace` gives it."""
    # `uv run` names itself in UV, whether or not uv is on PATH.
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        missing_dependency("uv not found: " + CHECKOV_HINT.format(version=CHECKOV_VERSION))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name, objects in rendered.items():
        placed = copy.deepcopy(objects)
        for obj in placed:
            obj["metadata"].setdefault("namespace", NAMESPACE)
        (manifests / f"{name}.yaml").write_text(yaml.safe_dump_all(placed, sort_keys=False))

    started = time.monotonic()
    result = subprocess.run(
        [
            uv,
            "tool",
            "run",
            "--quiet",
            "--from",
            f"checkov=={CHECKOV_VERSION}",
            "checkov",
            "--framework",
            "kubernetes",
            "--directory",
            str(manifests),
            "--output",
            "json",
            "--quiet",
            "--skip-download",
            "--skip-check",
            ",".join(SKIPPED_CHECKS),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},
    )
    seconds = round(time.monotonic() - started, 1)
    try:
        reports = checkov_reports(result.stdout)
    except json.JSONDecodeError:
        message = f"checkov gave no JSON (exit {result.returncode}):\n{result.stderr[-3000:]}"
        if "No solution found" in result.stderr or result.stderr.startswith("error:"):
            # uv could not install it (no package index reachable): a missing tool.
            missing_dependency(message + "\n" + CHECKOV_HINT.format(version=CHECKOV_VERSION))
        pytest.fail(message)

    summary: Counter[str] = Counter()
    failures: list[str] = []
    for report in reports:
        assert report.get("check_type") == "kubernetes", report.get("check_type")
        for key in ("passed", "failed", "skipped", "parsing_errors", "resource_count"):
            summary[key] += int(report["summary"][key])
        for check in report["results"]["failed_checks"]:
            failures.append(
                f"{check['check_id']} {check['check_name']}: {check['resource']}"
                f" ({Path(check['file_path']).stem}) {check.get('guideline') or ''}".rstrip()
            )
    figures["checkov"] = {
        "version": CHECKOV_VERSION,
        "value_sets": sorted(rendered),
        "seconds": seconds,
        "skipped_checks": sorted(SKIPPED_CHECKS),
        **dict(summary),
    }
    assert not failures, f"checkov: {len(failures)} failed checks:\n" + "\n".join(sorted(failures))
    assert summary["parsing_errors"] == 0, reports
    assert summary["passed"] > 0, reports
    assert summary["resource_count"] > 0, reports
    assert result.returncode == 0, result.stderr[-3000:]


# --- one source of truth ------------------------------------------------------------------
@pytest.mark.parametrize("copy_path", sorted(SHIPPED_COPIES))
def test_chart_files_are_copies_of_their_originals(copy_path: str) -> None:
    original = SHIPPED_COPIES[copy_path]
    assert (CHART_DIR / copy_path).read_bytes() == original.read_bytes(), (
        f"{copy_path} differs from {original.relative_to(ROOT)}: copy the original over it"
    )
{%- if cookiecutter.use_celery_exporter == "yes" %}


def prometheus_rule(rendered: dict[str, list[Obj]]) -> Obj:
    (rule,) = [obj for obj in rendered["monitoring"] if obj["kind"] == "PrometheusRule"]
    return rule


def test_prometheus_rule_is_deploy_alerts_exactly(rendered: dict[str, list[Obj]]) -> None:
    spec = prometheus_rule(rendered)["spec"]
    assert spec == yaml.safe_load(ALERT_RULES.read_text("utf-8"))


def test_prometheus_rule_passes_promtool_check_and_unit_tests(
    rendered: dict[str, list[Obj]], tmp_path: Path, figures: Figures
) -> None:
    """The rules as the operator hands them to Prometheus, under the suite's own tests."""
    promtool = require_binary("promtool", "prometheus")
    spec = prometheus_rule(rendered)["spec"]
    (tmp_path / ALERT_RULES.name).write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)

    checked = run([promtool, "check", "rules", ALERT_RULES.name], cwd=tmp_path)
    assert checked.returncode == 0, f"{checked.stdout}\n{checked.stderr}"
    tested = run([promtool, "test", "rules", ALERT_TESTS.name], cwd=tmp_path)
    assert tested.returncode == 0, f"{tested.stdout}\n{tested.stderr}"
    assert "SUCCESS" in tested.stdout + tested.stderr

    rules = [rule for group in spec["groups"] for rule in group["rules"]]
    figures["promtool"] = {
        "groups": len(spec["groups"]),
        "alerts": sum("alert" in rule for rule in rules),
        "recording_rules": sum("record" in rule for rule in rules),
    }
{%- endif %}
