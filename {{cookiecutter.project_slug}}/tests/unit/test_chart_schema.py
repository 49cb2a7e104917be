"""The chart's values: values.schema.json, the refusals of check-values.yaml, the README.

- values.yaml passes the schema, which describes every key of it and no other; every
  object the chart owns refuses unknown keys and requires all of its own (a `key: null`
  cannot drop one), while the free-form maps (labels, resources, ...) stay open;
- INVALID value sets fail `helm template` at the schema, helm's message naming the key;
- REFUSALS, combinations no schema can see, fail in templates/check-values.yaml with the
  keys to change named;
- the README's values table lists exactly the key paths of values.yaml.

Every case also goes through the `jsonschema` package, so the schema means the same to
helm and to Python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from tests.harness.chart import BASE_VALUES, CHART_DIR, merged, render, render_error

SCHEMA_FILE = CHART_DIR / "values.schema.json"
VALUES_FILE = CHART_DIR / "values.yaml"
README_FILE = CHART_DIR / "README.md"
#: How helm starts a schema refusal, and how check-values.yaml starts its own.
SCHEMA_REFUSED = "values don't meet the specifications of the schema"
CHECK_REFUSED = "values rejected:"
#: Keys the schema accepts that values.yaml does not set (a parent chart's globals).
SCHEMA_ONLY = {"global"}
#: Maps passed through to Kubernetes or to the app: the schema checks their values only.
FREE_FORM = {
    "commonLabels",
    "annotations",
    "labels",
    "podLabels",
    "podAnnotations",
    "nodeSelector",
    "affinity",
    "resources",
    "sentinelResources",
    "env",
    "secretEnv",
}

Schema = dict[str, Any]
Nodes = list[Schema]


@cache
def schema() -> Schema:
    loaded: Schema = json.loads(SCHEMA_FILE.read_text("utf-8"))
    return loaded


@cache
def chart_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text("utf-8"))
    return loaded


def schema_errors(values: dict[str, Any]) -> list[str]:
    """What the `jsonschema` package finds wrong with VALUES, one line per error."""
    validator = jsonschema.Draft202012Validator(schema())
    return sorted(
        f"/{'/'.join(str(part) for part in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(values)
    )


def effective(values: dict[str, Any], *, base: bool = True) -> dict[str, Any]:
    """values.yaml with the render's values merged over it, as helm coalesces them."""
    given = merged(BASE_VALUES, values) if base else values
    return merged(chart_values(), given)


# --- values.yaml walked together with the schema -----------------------------------------
def pointed(ref: str) -> Schema:
    assert ref.startswith("#/"), f"only local references are expected: {ref}"
    node: Any = schema()
    for part in ref[2:].split("/"):
        node = node[part]
    assert isinstance(node, dict), ref
    return node


def resolve(node: Schema) -> Nodes:
    """NODE and the nodes its `$ref` chain points at: every one of them applies."""
    nodes = [node]
    while "$ref" in nodes[-1]:
        nodes.append(pointed(nodes[-1]["$ref"]))
    return nodes


def child(nodes: Nodes, key: str) -> Nodes:
    """The schema nodes of KEY in an object described by NODES (none: not described)."""
    found: Nodes = []
    for node in nodes:
        if key in node.get("properties", {}):
            found += resolve(node["properties"][key])
        for pattern, sub in node.get("patternProperties", {}).items():
            if re.search(pattern, key):
                found += resolve(sub)
    return found


def items(nodes: Nodes) -> Nodes:
    found: Nodes = []
    for node in nodes:
        if isinstance(node.get("items"), dict):
            found += resolve(node["items"])
    return found


def closed(nodes: Nodes) -> bool:
    return any(node.get("additionalProperties") is False for node in nodes)


def declared(nodes: Nodes) -> set[str]:
    return {key for node in nodes for key in node.get("properties", {})}


def required(nodes: Nodes) -> set[str]:
    return {key for node in nodes for key in node.get("required", [])}


def joined(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclass
class Survey:
    #: Key paths of values.yaml down to the chart's own objects: the README table's rows.
    leaves: list[str] = field(default_factory=list)
    #: Keys of values.yaml the schema does not describe.
    undescribed: list[str] = field(default_factory=list)
    #: Keys the schema describes that values.yaml lacks.
    unset: list[str] = field(default_factory=list)
    #: Keys of the chart's own objects that the schema does not require.
    optional: list[str] = field(default_factory=list)
    #: Objects of values.yaml the schema leaves open although they are not free-form.
    open_objects: list[str] = field(default_factory=list)


def walk(
    value: Any, nodes: Nodes, path: str, survey: Survey, *, override: bool, in_list: bool
) -> None:
    """Walk VALUE (at PATH) and its schema NODES; OVERRIDE: inside a worker group."""
    if isinstance(value, dict) and closed(nodes):
        own = declared(nodes)
        for key, sub in value.items():
            sub_nodes = child(nodes, key)
            if not sub_nodes:
                survey.undescribed.append(joined(path, key))
                continue
            # A key matched by a pattern is a name (a worker group): its keys override.
            walk(
                sub,
                sub_nodes,
                joined(path, key),
                survey,
                override=override or key not in own,
                in_list=in_list,
            )
        if own and not override:
            unset = own - set(value) - (SCHEMA_ONLY if not path else set())
            survey.unset += [joined(path, key) for key in sorted(unset)]
            survey.optional += [joined(path, key) for key in value if key not in required(nodes)]
        return
    if isinstance(value, dict) and not in_list and path.rsplit(".", 1)[-1] not in FREE_FORM:
        survey.open_objects.append(path)
    if isinstance(value, list):
        for index, item in enumerate(value):
            walk(item, items(nodes), f"{path}[{index}]", survey, override=override, in_list=True)
    if not in_list:
        survey.leaves.append(path)


@cache
def survey() -> Survey:
    found = Survey()
    walk(chart_values(), resolve(schema()), "", found, override=False, in_list=False)
    return found


def test_the_schema_is_json_schema_2020_12() -> None:
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema())


def test_values_yaml_passes_the_schema() -> None:
    assert schema_errors(chart_values()) == []


def test_the_schema_describes_every_key_of_values_yaml_and_no_other() -> None:
    assert survey().undescribed == [], "keys of values.yaml the schema does not describe"
    assert survey().unset == [], "keys the schema describes that values.yaml does not set"


def test_the_chart_s_own_objects_are_closed_and_require_every_key() -> None:
    assert survey().open_objects == [], "objects the schema leaves open (additionalProperties)"
    assert survey().optional == [], "keys the schema does not require (null would drop them)"


# --- the schema's refusals ---------------------------------------------------------------
#: Invalid value sets (merged over BASE_VALUES) -> what helm's message must contain: the
#: offending key, as a JSON pointer or by name, and what was wrong.
INVALID = [
    pytest.param(
        {"workers": {"groups": {"high": {"pool": "threads"}}}},
        ["at '/workers/groups/high/pool'", "'prefork', 'gevent'"],
        id="group-pool-threads",
    ),
    pytest.param(
        {"worker": {"groups": {"high": {"concurrency": 4}}}},
        ["at '': additional properties 'worker' not allowed"],
        id="misspelt-top-level-key",
    ),
    pytest.param(
        {"api": {"ingres": {"enabled": True}}},
        ["at '/api': additional properties 'ingres' not allowed"],
        id="misspelt-nested-key",
    ),
    pytest.param(
        {"workers": {"defaults": {"concurrency": 0}}},
        ["at '/workers/defaults/concurrency': minimum: got 0, want 1"],
        id="defaults-concurrency-0",
    ),
    pytest.param(
        {"redis": {"replicas": 0}},
        ["at '/redis/replicas': minimum: got 0, want 1"],
        id="redis-replicas-0",
    ),
    pytest.param(
        {"redis": {"tls": {"enable": True}}},
        ["at '/redis/tls': additional properties 'enable' not allowed"],
        id="redis-tls-misspelt",
    ),
    pytest.param(
        {"redis": {"auth": {"passwordKey": "redis-password"}}},
        ["at '/redis/auth': additional properties 'passwordKey' not allowed"],
        id="redis-one-shared-password-key",
    ),
    pytest.param(
        {"api": {"autoscaling": {"maxReplicas": "ten"}}},
        ["at '/api/autoscaling/maxReplicas': got string, want integer"],
        id="api-max-replicas-ten",
    ),
    pytest.param(
        {"workers": {"groups": {"Bad_Name": {"queues": ["low"]}}}},
        ["at '/workers/groups': additional properties 'Bad_Name' not allowed", "pattern"],
        id="group-name-Bad_Name",
    ),
    pytest.param(
        {"workers": {"groups": {"a-very-long-group-name": {"queues": ["low"]}}}},
        ["invalid propertyName 'a-very-long-group-name'", "maxLength: got 22, want 20"],
        id="group-name-too-long",
    ),
    pytest.param(
        {"workers": {"groups": {"high": {"queues": ["hihg"]}}}},
        ["at '/workers/groups/high/queues/0'", "'high', 'default', 'low'"],
        id="unknown-queue-hihg",
    ),
    pytest.param(
        {"workers": {"groups": {"high": {"queues": []}}}},
        ["at '/workers/groups/high/queues': minItems: got 0, want 1"],
        id="no-queue",
    ),
    pytest.param(
        {"workers": {"groups": {"high": {"queues": ["high", "high"]}}}},
        ["at '/workers/groups/high/queues': items at 0 and 1 are equal"],
        id="queue-twice",
    ),
    pytest.param(
        {"workers": {"groups": {"low": {"autoscaling": {"mode": "kubernetes"}}}}},
        ["at '/workers/groups/low/autoscaling/mode'", "'none', 'hpa', 'keda'"],
        id="autoscaling-mode-kubernetes",
    ),
    pytest.param(
        {"workers": {"groups": {"low": {"autoscaling": {"minReplicas": -1}}}}},
        ["at '/workers/groups/low/autoscaling/minReplicas': minimum: got -1, want 0"],
        id="group-min-replicas-negative",
    ),
    pytest.param(
        {"workers": {"groups": {"high": {"concurency": 4}}}},
        ["at '/workers/groups/high': additional properties 'concurency' not allowed"],
        id="unknown-key-in-group",
    ),
    pytest.param(
        {"image": {"pullPolicy": "sometimes"}},
        ["at '/image/pullPolicy'", "'IfNotPresent', 'Always', 'Never'"],
        id="pull-policy-sometimes",
    ),
    pytest.param(
        {"image": {"tag": 1.2}},
        ["at '/image/tag': got number, want string"],
        id="image-tag-a-number",
    ),
    pytest.param(
        {"redis": {"antiAffinity": "always"}},
        ["at '/redis/antiAffinity'", "'required', 'preferred', 'none'"],
        id="redis-anti-affinity-always",
    ),
    pytest.param(
        {"redis": {"enabled": False, "external": {"sentinels": ["sentinel-0"]}}},
        ["at '/redis/external/sentinels/0'", "does not match pattern"],
        id="sentinel-without-port",
    ),
    pytest.param(
        {"api": {"service": {"port": 70000}}},
        ["at '/api/service/port': maximum: got 70,000, want 65,535"],
        id="api-port-70000",
    ),
    pytest.param(
        {"api": {"service": {"type": "External"}}},
        ["at '/api/service/type'", "'ClusterIP', 'NodePort', 'LoadBalancer'"],
        id="api-service-type-external",
    ),
    pytest.param(
        {
            "api": {
                "ingress": {
                    "hosts": [
                        {"host": "api.example.com", "paths": [{"path": "/", "pathType": "Regex"}]}
                    ]
                }
            }
        },
        ["at '/api/ingress/hosts/0/paths/0/pathType'", "'Prefix', 'Exact'"],
        id="ingress-path-type-regex",
    ),
    pytest.param(
        {"api": {"pdb": {"maxUnavailable": 0}}},
        ["at '/api/pdb/maxUnavailable'", "minimum: got 0, want 1"],
        id="pdb-max-unavailable-0",
    ),
    pytest.param(
        {"database": {"kind": "{% if cookiecutter.database == "postgresql" %}mysql{% else %}postgresql{% endif %}"}},
        ["at '/database/kind'", "'{{ cookiecutter.database }}'"],
        id="database-kind-without-a-driver",
    ),
    pytest.param(
        {"app": {"env": {"LOG_JSON": True}}},
        ["at '/app/env/LOG_JSON': got boolean, want string"],
        id="app-env-not-a-string",
    ),
    pytest.param(
        {"imagePullSecrets": [{"name": "registry-login"}]},
        ["at '/imagePullSecrets/0': got object, want string"],
        id="pull-secret-as-object",
    ),
{%- if cookiecutter.use_flower == "yes" %}
    pytest.param(
        {"flower": {"service": {"port": 0}}},
        ["at '/flower/service/port': minimum: got 0, want 1"],
        id="flower-port-0",
    ),
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    pytest.param(
        {"exporter": {"queues": ["urgent"]}},
        ["at '/exporter/queues/0'", "'high', 'default', 'low', 'dead'"],
        id="exporter-queue-urgent",
    ),
    pytest.param(
        {"redis": {"metrics": {"enable": False}}},
        ["at '/redis/metrics': additional properties 'enable' not allowed"],
        id="redis-metrics-misspelt",
    ),
    pytest.param(
        {"redis": {"metrics": {"image": {"tag": ""}}}},
        ["at '/redis/metrics/image/tag'", "minLength: got 0, want 1"],
        id="redis-metrics-unpinned",
    ),
{%- endif %}
]


@pytest.mark.parametrize(("values", "expected"), INVALID)
def test_the_schema_refuses_and_names_the_key(values: dict[str, Any], expected: list[str]) -> None:
    message = render_error(values)
    assert SCHEMA_REFUSED in message, f"not refused by the schema:\n{message}"
    for fragment in expected:
        assert fragment in message, f"{fragment!r} is not in helm's message:\n{message}"
    assert schema_errors(effective(values)), f"jsonschema accepts what helm refused:\n{message}"


def test_a_rejected_database_url_is_not_echoed() -> None:
    """The URL carries a password: helm's message names the key, never the value."""
    url = "postgresql://app:not-echoed-pw@db.example.com:5432/app"
    message = render_error({"database": {"external": {"url": url}}})
    assert "at '/database/external/url'" in message, message
    assert "not-echoed-pw" not in message, message


#: Value sets the schema must let through (they render).
VALID = [
    pytest.param({"workers": {"groups": {"bulk": None}}}, True, id="group-of-defaults-only"),
    pytest.param(
        {"workers": {"groups": {"twenty-characters-ok": {"queues": ["low", "default"]}}}},
        True,
        id="group-name-of-20-characters",
    ),
    pytest.param(
        {"workers": {"groups": {"low": {"autoscaling": {"mode": "keda", "minReplicas": 0}}}}},
        True,
        id="keda-from-zero",
    ),
    pytest.param(
        {"api": {"pdb": {"maxUnavailable": "50%"}}, "redis": {"maxmemory": "2gb"}},
        True,
        id="percentage-and-memory-units",
    ),
    pytest.param(
        {
            "redis": {
                "enabled": False,
                "auth": {"existingSecret": "redis-auth"},
                "external": {"sentinels": ["sentinel-0.example.com:26379", "[fd00::10]:26379"]},
            }
        },
        True,
        id="external-redis",
    ),
    pytest.param(
        {"redis": {"tls": {"enabled": True, "secretName": "redis-tls", "clientSecretName": "c"}}},
        True,
        id="redis-tls-with-client-certificate",
    ),
    pytest.param(
        {
            "database": {"external": {"existingSecret": "ledger-url"}},
            "migrations": {"helmHook": True},
        },
        False,
        id="hook-with-existing-secret",
    ),
    pytest.param({"database": {"internal": {"enabled": True}}}, False, id="internal-database"),
]


@pytest.mark.parametrize(("values", "base"), VALID)
def test_the_schema_lets_valid_values_through(values: dict[str, Any], base: bool) -> None:
    assert schema_errors(effective(values, base=base)) == []
    assert render(values, base=base), "nothing rendered"


# --- check-values.yaml: combinations the schema cannot see --------------------------------
GRACE = "terminationGracePeriodSeconds"
#: Schema-valid value sets -> what check-values.yaml's message must contain.
REFUSALS = [
    pytest.param(
        {},
        False,
        [
            "the ledger needs a database",
            "database.external.url",
            "database.external.existingSecret",
            "database.internal.enabled=true",
        ],
        id="no-database",
    ),
    pytest.param(
        {"database": {"internal": {"enabled": True}}},
        True,
        ["database.internal.enabled=true and database.external.* are both set"],
        id="internal-and-external-url",
    ),
    pytest.param(
        {"database": {"external": {"existingSecret": "ledger-url"}}},
        True,
        ["database.external.url and database.external.existingSecret are both set"],
        id="url-and-existing-secret",
    ),
    pytest.param(
        {"workers": {"groups": {"high": {GRACE: 330}}}},
        True,
        [f"workers.groups.high.{GRACE} (330) must exceed app.taskTimeLimit (330)"],
        id="worker-grace-equal-to-time-limit",
    ),
    pytest.param(
        {"app": {"taskTimeLimit": 400}},
        True,
        [
            f"workers.groups.{group}.{GRACE} (360) must exceed app.taskTimeLimit (400)"
            for group in ("high", "default", "low")
        ],
        id="time-limit-above-every-grace-period",
    ),
    pytest.param(
        {"app": {"visibilityTimeout": 300}},
        True,
        ["app.visibilityTimeout (300) must exceed app.taskTimeLimit (330)"],
        id="visibility-timeout-below-time-limit",
    ),
    pytest.param(
        {"app": {"taskSoftTimeLimit": 330}},
        True,
        ["app.taskTimeLimit (330) must exceed app.taskSoftTimeLimit (330)"],
        id="soft-limit-equal-to-hard-limit",
    ),
    pytest.param(
        {"redis": {"quorum": 4}},
        True,
        ["redis.quorum (4) exceeds redis.replicas (3)"],
        id="quorum-above-replicas",
    ),
    pytest.param(
        {"redis": {"preStopTimeoutSeconds": 90}},
        True,
        [f"redis.{GRACE} (90) must exceed redis.preStopTimeoutSeconds (90)"],
        id="redis-grace-not-above-prestop",
    ),
    pytest.param(
        {"redis": {"minReplicasToWrite": 3}},
        True,
        ["redis.minReplicasToWrite (3) must be below redis.replicas (3)"],
        id="min-replicas-to-write-not-below-replicas",
    ),
    pytest.param(
        {"redis": {"enabled": False, "auth": {"existingSecret": "redis-auth"}}},
        True,
        ["redis.enabled=false needs redis.external.sentinels"],
        id="external-redis-without-sentinels",
    ),
    pytest.param(
        {"redis": {"enabled": False, "external": {"sentinels": ["sentinel.example.com:26379"]}}},
        True,
        ["redis.enabled=false needs redis.auth.existingSecret"],
        id="external-redis-without-passwords",
    ),
    pytest.param(
        {"redis": {"external": {"sentinels": ["sentinel.example.com:26379"]}}},
        True,
        ["redis.external.sentinels is set while redis.enabled=true"],
        id="external-sentinels-with-redis-in-the-chart",
    ),
    pytest.param(
        {"redis": {"tls": {"enabled": True}}},
        True,
        ["redis.tls.enabled=true needs redis.tls.secretName"],
        id="redis-tls-without-its-secret",
    ),
    pytest.param(
        {"redis": {"tls": {"clientSecretName": "client-cert"}}},
        True,
        ["redis.tls.clientSecretName is set while redis.tls.enabled=false"],
        id="client-certificate-without-tls",
    ),
    pytest.param(
        {"migrations": {"helmHook": True}},
        True,
        ["migrations.helmHook=true", "database.external.existingSecret"],
        id="hook-without-existing-secret",
    ),
    pytest.param(
        {"workers": {"groups": {"low": {"autoscaling": {"mode": "hpa", "minReplicas": 0}}}}},
        True,
        ["workers.groups.low.autoscaling.minReplicas is 0 with mode hpa"],
        id="hpa-from-zero",
    ),
    pytest.param(
        {"workers": {"groups": {"low": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}}},
        True,
        ["workers.groups.low.autoscaling.minReplicas (5) exceeds its maxReplicas (2)"],
        id="group-min-above-max",
    ),
    pytest.param(
        {"api": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        True,
        ["api.autoscaling.minReplicas (5) exceeds api.autoscaling.maxReplicas (2)"],
        id="api-min-above-max",
    ),
]


@pytest.mark.parametrize(("values", "base", "expected"), REFUSALS)
def test_check_values_refuses_incoherent_values(
    values: dict[str, Any], base: bool, expected: list[str]
) -> None:
    assert schema_errors(effective(values, base=base)) == [], "the schema should accept these"
    message = render_error(values, base=base)
    assert CHECK_REFUSED in message, f"not refused by check-values.yaml:\n{message}"
    for fragment in expected:
        assert fragment in message, f"{fragment!r} is not in helm's message:\n{message}"


# --- the README ------------------------------------------------------------------------------
def readme_value_rows() -> list[str]:
    """The key paths in the first column of the README's "Values" table."""
    text = README_FILE.read_text("utf-8")
    match = re.search(r"^## Values\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f'{README_FILE.name}: no "## Values" section'
    return re.findall(r"^\| `([^`]+)` \|", match.group(1), re.M)


def test_the_readme_lists_every_value() -> None:
    rows = readme_value_rows()
    duplicates = sorted({row for row in rows if rows.count(row) > 1})
    assert duplicates == [], "listed more than once in the README"
    assert sorted(set(survey().leaves) - set(rows)) == [], "values.yaml keys the README lacks"
    assert sorted(set(rows) - set(survey().leaves)) == [], "README rows values.yaml lacks"
