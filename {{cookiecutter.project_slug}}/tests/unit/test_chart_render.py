"""The Helm chart, rendered: which objects, and the promises each one keeps.

Rendered offline with `helm template` (tests/harness/chart.py); nothing here needs a
cluster. Wiring between objects (references, selectors, policies) is test_chart_wiring.py.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from {{ cookiecutter.package_name }}.settings import Settings
from tests.harness.chart import (
    CHART_NAME,
    FULLNAME,
    ROOT,
    Obj,
    containers,
    find,
    of_kind,
    pod_spec,
    render,
    render_error,
    workloads,
)
from tests.harness.redis import acl_rules

# The chart's default worker groups are the service's own defaults (settings.py).
WORKER_GROUPS = {
    name: (",".join(group.queues), group.pool, group.concurrency)
    for name, group in Settings.model_construct().worker_groups.items()
}


def default_objects() -> set[tuple[str, str]]:
    """(kind, name) of every object the default values render."""
    names = {
        ("ServiceAccount", FULLNAME),
        ("ConfigMap", f"{FULLNAME}-app"),
        ("Secret", f"{FULLNAME}-app"),
        ("Secret", f"{FULLNAME}-api-keys"),
        ("Secret", f"{FULLNAME}-database"),
        ("Secret", f"{FULLNAME}-redis"),
        ("ConfigMap", f"{FULLNAME}-redis-scripts"),
        ("Deployment", f"{FULLNAME}-api"),
        ("Service", f"{FULLNAME}-api"),
        ("PodDisruptionBudget", f"{FULLNAME}-api"),
        ("Deployment", f"{FULLNAME}-beat"),
        ("Job", f"{FULLNAME}-migrate-1"),
        ("StatefulSet", f"{FULLNAME}-redis"),
        ("Service", f"{FULLNAME}-redis-headless"),
        ("PodDisruptionBudget", f"{FULLNAME}-redis"),
        ("NetworkPolicy", f"{FULLNAME}-default-deny"),
    }
    names |= {("Service", f"{FULLNAME}-redis-{i}") for i in range(3)}
    for group in WORKER_GROUPS:
        names |= {
            ("Deployment", f"{FULLNAME}-worker-{group}"),
            ("PodDisruptionBudget", f"{FULLNAME}-worker-{group}"),
        }
    components = ["api", "worker", "beat", "migrate", "redis"]
{%- if cookiecutter.use_flower == "yes" %}
    names |= {
        ("Deployment", f"{FULLNAME}-flower"),
        ("Service", f"{FULLNAME}-flower"),
        ("Secret", f"{FULLNAME}-flower"),
    }
    components.append("flower")
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    names |= {("Deployment", f"{FULLNAME}-exporter"), ("Service", f"{FULLNAME}-exporter")}
    names |= {("Service", f"{FULLNAME}-redis-metrics")}
    components.append("exporter")
{%- endif %}
    names |= {("NetworkPolicy", f"{FULLNAME}-{component}") for component in components}
    return names


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return render()


def env_of(container: Obj) -> dict[str, Obj]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def config_value(objects: list[Obj], key: str) -> str:
    value: str = find(objects, "ConfigMap", f"{FULLNAME}-app")["data"][key]
    return value


# --- what is rendered ------------------------------------------------------------------
def test_the_default_render_is_exactly_the_stack(objects: list[Obj]) -> None:
    rendered = [(obj["kind"], obj["metadata"]["name"]) for obj in objects]
    assert len(rendered) == len(set(rendered)), "an object is rendered twice"
    assert set(rendered) == default_objects()


def test_every_object_carries_the_common_labels(objects: list[Obj]) -> None:
    wanted = {
        "app.kubernetes.io/name": CHART_NAME,
        "app.kubernetes.io/instance": "rel",
        "app.kubernetes.io/managed-by": "Helm",
        "app.kubernetes.io/part-of": CHART_NAME,
    }
    for obj in render({"commonLabels": {"team": "payments"}}):
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']} {obj['metadata']['name']}"
        for key, value in {**wanted, "team": "payments"}.items():
            assert labels.get(key) == value, f"{where}: label {key}={labels.get(key)!r}"
        assert labels.get("app.kubernetes.io/component"), f"{where}: no component label"
        assert labels.get("helm.sh/chart", "").startswith(f"{CHART_NAME}-"), where


# --- workers -----------------------------------------------------------------------------
def worker_args(objects: list[Obj], group: str) -> list[str]:
    deployment = find(objects, "Deployment", f"{FULLNAME}-worker-{group}")
    worker = next(c for c in containers(deployment) if c["name"] == "worker")
    assert worker["command"] == ["/app/deploy/entrypoints/worker.sh"]
    args: list[str] = worker["args"]
    return args


@pytest.mark.reliability("R10", "R19")
def test_one_worker_deployment_per_group_with_its_queues_pool_and_concurrency(
    objects: list[Obj],
) -> None:
    for group, (queue, pool, concurrency) in WORKER_GROUPS.items():
        args = worker_args(objects, group)
        assert f"--queues={queue}" in args
        assert f"--pool={pool}" in args
        assert f"--concurrency={concurrency}" in args


@pytest.mark.reliability("R10", "R19")
def test_a_group_is_merged_over_the_defaults_and_may_turn_a_default_off() -> None:
    objects = render(
        {
            "workers": {
                "defaults": {"concurrency": 3, "resources": {"limits": {"memory": "3Gi"}}},
                "groups": {
                    "bulk": {
                        "queues": ["low", "default"],
                        "pool": "gevent",
                        "pdb": {"enabled": False},
                    },
                    "high": None,
                },
            }
        }
    )
    deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    assert f"{FULLNAME}-worker-high" not in deployments, "a group set to null is removed"
    args = worker_args(objects, "bulk")
    assert {"--queues=low,default", "--pool=gevent", "--concurrency=3"} <= set(args)
    bulk = find(objects, "Deployment", f"{FULLNAME}-worker-bulk")
    worker = containers(bulk)[-1]
    assert worker["resources"]["limits"] == {"cpu": "1", "memory": "3Gi"}
    pdbs = {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")}
    assert f"{FULLNAME}-worker-bulk" not in pdbs, "pdb.enabled=false in a group is ignored"
    assert f"{FULLNAME}-worker-default" in pdbs


@pytest.mark.reliability("R20")
def test_workers_get_longer_than_the_task_time_limit_to_shut_down(objects: list[Obj]) -> None:
    limit = int(config_value(objects, "TASK_TIME_LIMIT"))
    for group in WORKER_GROUPS:
        deployment = find(objects, "Deployment", f"{FULLNAME}-worker-{group}")
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace > limit, f"{group}: grace {grace} s <= TASK_TIME_LIMIT {limit} s"
        # A new pod consumes before an old one is told to stop.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {
            "maxSurge": 1,
            "maxUnavailable": 0,
        }


@pytest.mark.reliability("R20")
def test_sigterm_reaches_the_worker_process() -> None:
    """No shell stays in between: the entrypoint execs the launcher, which execs Celery."""
    script = (ROOT / "deploy" / "entrypoints" / "worker.sh").read_text()
    assert re.search(r"^exec python -m \S+\.launch worker", script, re.M), script
    launcher = next((ROOT / "src").glob("*/launch.py")).read_text()
    assert "os.execvpe(" in launcher


def test_worker_probes_read_the_watchdog_heartbeat_never_celery_inspect(objects: list[Obj]) -> None:
    for group in WORKER_GROUPS:
        worker = containers(find(objects, "Deployment", f"{FULLNAME}-worker-{group}"))[-1]
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            command = worker[probe]["exec"]["command"]
            assert command[:3] == [
                "/app/deploy/entrypoints/healthcheck.sh",
                "heartbeat",
                "/tmp/heartbeat",
            ]
            assert "inspect" not in " ".join(command)
    assert config_value(objects, "HEARTBEAT_FILE") == "/tmp/heartbeat"


# --- autoscaling ---------------------------------------------------------------------------
def test_autoscaled_groups_leave_replicas_to_the_autoscaler() -> None:
    objects = render(
        {
            "workers": {
                "groups": {
                    "high": {"autoscaling": {"mode": "hpa", "minReplicas": 2, "maxReplicas": 6}},
                    "low": {"autoscaling": {"mode": "keda", "minReplicas": 0}},
                }
            }
        }
    )
    high = find(objects, "Deployment", f"{FULLNAME}-worker-high")
    low = find(objects, "Deployment", f"{FULLNAME}-worker-low")
    default = find(objects, "Deployment", f"{FULLNAME}-worker-default")
    assert "replicas" not in high["spec"]
    assert "replicas" not in low["spec"]
    assert default["spec"]["replicas"] == 1
    hpa = find(objects, "HorizontalPodAutoscaler", f"{FULLNAME}-worker-high")
    assert hpa["spec"]["scaleTargetRef"]["name"] == high["metadata"]["name"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    scaled = find(objects, "ScaledObject", f"{FULLNAME}-worker-low")
    assert scaled["spec"]["minReplicaCount"] == 0
    assert len(of_kind(objects, "ScaledObject")) == 1
    assert len(of_kind(objects, "HorizontalPodAutoscaler")) == 1


def test_keda_scales_on_every_priority_list_of_every_queue() -> None:
    objects = render(
        {
            "workers": {
                "groups": {"low": {"queues": ["low", "default"], "autoscaling": {"mode": "keda"}}}
            }
        }
    )
    scaled = find(objects, "ScaledObject", f"{FULLNAME}-worker-low")
    triggers = scaled["spec"]["triggers"]
    lists = [trigger["metadata"]["listName"] for trigger in triggers]
    expected = [
        queue + ("" if level == 0 else f"\x06\x16{level}")
        for queue in ("low", "default")
        for level in range(10)
    ]
    assert lists == expected
    auth = find(objects, "TriggerAuthentication", f"{FULLNAME}-redis")
    for trigger in triggers:
        assert trigger["type"] == "redis-sentinel"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert trigger["metadata"]["sentinelMaster"] == "mymaster"
        # KEDA's own user (it only measures the queues) and Sentinel's lookup-only user.
        assert trigger["metadata"]["username"] == "keda"
        assert trigger["metadata"]["sentinelUsername"] == "client"
        assert "enableTLS" not in trigger["metadata"]
    parameters = {ref["parameter"]: ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert parameters == {"password": "redis-keda", "sentinelPassword": "sentinel-client"}
    assert "keda" in acl_rules("redis")


# --- Redis users and TLS ---------------------------------------------------------------------
#: Each Redis client's own user of users.acl, by component label (as compose gives them).
REDIS_USERS = {
    "api": "api",
    "worker": "worker",
    "beat": "beat",
{%- if cookiecutter.use_flower == "yes" %}
    "flower": "flower",
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    "exporter": "exporter",
{%- endif %}
}
REDIS_SECRET = f"{FULLNAME}-redis"
TLS_DIR = "/etc/redis-tls"
KEDA = {"workers": {"groups": {"low": {"autoscaling": {"mode": "keda"}}}}}
TLS = {"enabled": True, "secretName": "redis-tls"}


def component_of(obj: Obj) -> str:
    label: str = obj["metadata"]["labels"]["app.kubernetes.io/component"]
    return label


def secret_sources(workload: Obj, container: Obj) -> dict[str, tuple[str, str]]:
    """Setting -> (Secret, key) of every secret a container reads: a `secretKeyRef`
    variable, or a <NAME>_FILE variable followed through its mount to the Secret."""
    sources = {}
    for name, entry in env_of(container).items():
        reference = entry.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            sources[name] = (reference["name"], reference["key"])
        elif name.endswith("_FILE") and str(entry.get("value", "")).startswith("/run/secrets/"):
            sources[name.removesuffix("_FILE")] = file_source(workload, container, entry["value"])
    return sources


def redis_secret_keys(workload: Obj, container: Obj) -> set[str]:
    """The keys of the Redis Secret a container reads."""
    return {
        key
        for secret, key in secret_sources(workload, container).values()
        if secret == REDIS_SECRET
    }


def redis_node_containers(statefulset: Obj) -> list[Obj]:
    """The Redis pods' redis and sentinel containers, which make and use every user."""
    return [c for c in containers(statefulset) if c["name"] in {"redis", "sentinel"}]


def redis_clients(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) of every container that reads a Redis password, Redis's own aside."""
    for workload in workloads(objects):
        if workload["kind"] == "StatefulSet" and component_of(workload) == "redis":
            continue
        for container in containers(workload):
            if redis_secret_keys(workload, container):
                yield workload, container


def test_every_component_is_its_own_redis_user(objects: list[Obj]) -> None:
    seen = set()
    for workload, container in redis_clients(objects):
        component = component_of(workload)
        user = REDIS_USERS[component]
        env = env_of(container)
        secrets = secret_sources(workload, container)
        where = f"{workload['metadata']['name']}/{container['name']}"
        assert env["REDIS_USERNAME"]["value"] == user, where
        assert secrets["REDIS_PASSWORD"] == (REDIS_SECRET, f"redis-{user}"), where
        assert env["REDIS_SENTINEL_USERNAME"]["value"] == "client", where
        assert secrets["REDIS_SENTINEL_PASSWORD"] == (REDIS_SECRET, "sentinel-client"), where
        seen.add(component)
    assert seen == set(REDIS_USERS)
    assert set(REDIS_USERS.values()) <= set(acl_rules("redis"))
    # The migrations touch only the ledger: no Redis password at all.
    migrate = find(objects, "Job", f"{FULLNAME}-migrate-1")
    assert not any(redis_secret_keys(migrate, c) for c in containers(migrate))


def test_no_component_gets_another_user_s_password() -> None:
    objects = render(KEDA)
    for workload, container in redis_clients(objects):
        own = {f"redis-{REDIS_USERS[component_of(workload)]}", "sentinel-client"}
        keys = redis_secret_keys(workload, container)
        assert keys == own, f"{workload['metadata']['name']}: {sorted(keys - own)}"
        assert not keys & {"redis-admin", "sentinel-peer"}
    auth = find(objects, "TriggerAuthentication", f"{FULLNAME}-redis")
    keda = {ref["key"] for ref in auth["spec"]["secretTargetRef"] if ref["name"] == REDIS_SECRET}
    assert keda == {"redis-keda", "sentinel-client"}


def test_the_redis_pods_make_every_user_of_users_acl_with_its_own_password(
    objects: list[Obj],
) -> None:
    users = {(where, user) for where in ("redis", "sentinel") for user in acl_rules(where)}
    secret = find(objects, "Secret", REDIS_SECRET)
    assert set(secret["data"]) == {f"{where}-{user}" for where, user in users}
    passwords = [base64.b64decode(value) for value in secret["data"].values()]
    assert len(set(passwords)) == len(passwords), "two users share a password"
    variables = {
        f"{where.upper()}_USER_{user.upper().replace('-', '_')}_PASSWORD": f"{where}-{user}"
        for where, user in users
    }
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    for container in redis_node_containers(statefulset):
        env = env_of(container)
        refs = {
            name: entry["valueFrom"]["secretKeyRef"]["key"]
            for name, entry in env.items()
            if "valueFrom" in entry
        }
        assert refs == variables, container["name"]
        assert env["REDIS_USERS_ACL"]["value"] == "/opt/redis-scripts/users.acl"
        assert "REDIS_PASSWORD" not in env, "the one shared password is back"
    scripts = find(objects, "ConfigMap", f"{FULLNAME}-redis-scripts")["data"]
    assert scripts["users.acl"] == (ROOT / "deploy" / "redis" / "users.acl").read_text()


def file_source(workload: Obj, container: Obj, path: str) -> tuple[str, str]:
    """(Secret, key) a file of a container comes from, through its mounts and volumes."""
    directory, _, name = path.rpartition("/")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
    if "secret" in volume:
        return volume["secret"]["secretName"], name
    for source in volume["projected"]["sources"]:
        for item in source.get("secret", {}).get("items", []):
            if item["path"] == name:
                return source["secret"]["name"], item["key"]
    raise AssertionError(f"{path}: no Secret key in volume {volume['name']}")


def test_redis_tls_serves_the_secret_s_certificate_and_the_apps_verify_it() -> None:
    objects = render({"redis": {"tls": TLS}, **KEDA})
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    for container in redis_node_containers(statefulset):
        env = env_of(container)
        assert env["REDIS_TLS"]["value"] == "true"
        for variable, key in (
            ("REDIS_TLS_CA_FILE", "ca.crt"),
            ("REDIS_TLS_CERT_FILE", "tls.crt"),
            ("REDIS_TLS_KEY_FILE", "tls.key"),
        ):
            path = env[variable]["value"]
            assert file_source(statefulset, container, path) == ("redis-tls", key), variable
    clients = list(redis_clients(objects))
    assert {component_of(w) for w, _ in clients} == set(REDIS_USERS)
    for workload, container in clients:
        env = env_of(container)
        where = workload["metadata"]["name"]
        assert env["REDIS_TLS"]["value"] == "true", where
        ca = env["REDIS_TLS_CA_FILE"]["value"]
        assert file_source(workload, container, ca) == ("redis-tls", "ca.crt"), where
        assert "REDIS_TLS_CERT_FILE" not in env, where
        # A client mounts the CA of the servers' Secret, never their key.
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "redis-tls")
        assert volume["projected"]["sources"] == [
            {"secret": {"name": "redis-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}
        ], where
    for scaled in of_kind(objects, "ScaledObject"):
        assert all(t["metadata"]["enableTLS"] == "true" for t in scaled["spec"]["triggers"])
    auth = find(objects, "TriggerAuthentication", f"{FULLNAME}-redis")
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert refs["ca"] == ("redis-tls", "ca.crt")
{%- if cookiecutter.use_celery_exporter == "yes" %}
    exporter = env_of(containers(find(objects, "Deployment", f"{FULLNAME}-exporter"))[-1])
    options = exporter["CE_BROKER_TRANSPORT_OPTION"]["value"]
    kwargs = json.loads(options.split("sentinel_kwargs=", 1)[1])
    assert kwargs["username"] == "client"
    assert (kwargs["ssl"], kwargs["ssl_ca_certs"]) == (True, f"{TLS_DIR}/ca.crt")
    assert f"ssl_ca_certs={TLS_DIR}/ca.crt" in exporter["CE_BROKER_SSL_OPTION"]["value"]
{%- endif %}


def test_redis_tls_client_certificate_reaches_every_client() -> None:
    tls = {**TLS, "clientSecretName": "redis-client"}
    objects = render({"redis": {"tls": tls}, **KEDA})
    for workload, container in redis_clients(objects):
        env = env_of(container)
        for variable, key in (
            ("REDIS_TLS_CERT_FILE", "tls.crt"),
            ("REDIS_TLS_KEY_FILE", "tls.key"),
        ):
            path = env[variable]["value"]
            assert file_source(workload, container, path) == ("redis-client", key)
    auth = find(objects, "TriggerAuthentication", f"{FULLNAME}-redis")
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert refs["cert"] == ("redis-client", "tls.crt")
    assert refs["key"] == ("redis-client", "tls.key")


def test_without_tls_no_pod_mounts_or_asks_for_it(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        assert not [v for v in pod_spec(workload)["volumes"] if "tls" in v["name"]]
        for container in containers(workload):
            assert not {"REDIS_TLS", "REDIS_TLS_CA_FILE"} & set(env_of(container))
{%- if cookiecutter.use_celery_exporter == "yes" %}


# --- redis_exporter beside each Redis node ------------------------------------------------
def metrics_container(objects: list[Obj]) -> Obj:
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    return next(c for c in containers(statefulset) if c["name"] == "metrics")


def test_each_redis_pod_runs_redis_exporter_as_metrics_with_only_its_own_password(
    objects: list[Obj],
) -> None:
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    container = metrics_container(objects)
    env = env_of(container)
    assert env["REDIS_ADDR"]["value"] == "redis://localhost:6379"
    assert env["REDIS_USER"]["value"] == "metrics"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": REDIS_SECRET,
        "key": "redis-metrics",
    }
    # Its own password and no other: never admin's, nor a component's.
    assert redis_secret_keys(statefulset, container) == {"redis-metrics"}
    assert "metrics" in acl_rules("redis")
    # `metrics` may not run CONFIG (users.acl): the exporter must not ask for it.
    assert env["REDIS_EXPORTER_CONFIG_COMMAND"]["value"] == "-"
    assert "+config" not in acl_rules("redis")["metrics"]
    assert "REDIS_EXPORTER_SKIP_TLS_VERIFICATION" not in env
    assert {"name": "metrics", "containerPort": 9121, "protocol": "TCP"} in container["ports"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}


def test_redis_exporter_runs_the_compose_stack_s_image(objects: list[Obj]) -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r"\$\{REDIS_EXPORTER_IMAGE:-([^}]+)\}", compose)
    assert found, "docker-compose.yml has no REDIS_EXPORTER_IMAGE default"
    assert metrics_container(objects)["image"] == found.group(1)


def test_redis_exporter_speaks_tls_to_its_node_when_redis_does() -> None:
    objects = render({"redis": {"tls": TLS}})
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    container = metrics_container(objects)
    env = env_of(container)
    assert env["REDIS_ADDR"]["value"] == "rediss://localhost:6379"
    # The node's certificate names its Service, never localhost (see the StatefulSet).
    assert env["REDIS_EXPORTER_SKIP_TLS_VERIFICATION"]["value"] == "true"
    # It reads no TLS material, so the servers' key stays out of its reach.
    assert [m["mountPath"] for m in container["volumeMounts"]] == ["/tmp"]
    assert redis_secret_keys(statefulset, container) == {"redis-metrics"}


def test_redis_metrics_can_be_turned_off() -> None:
    objects = render(
        {
            "redis": {"metrics": {"enabled": False}},
            "monitoring": {"serviceMonitor": {"enabled": True}},
        }
    )
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    assert [c["name"] for c in containers(statefulset)] == ["redis", "sentinel"]
    leftovers = [o for o in objects if o["metadata"]["name"] == f"{FULLNAME}-redis-metrics"]
    assert leftovers == [], "a redis-metrics object without its exporter"


def relabelled(labels: dict[str, str], rules: list[Obj]) -> dict[str, str]:
    """A target's labels after Prometheus's `replace` relabelings (the default action)."""
    out = dict(labels)
    for rule in rules:
        assert rule.get("action", "replace").lower() == "replace", rule
        sources = [out.get(name, "") for name in rule.get("sourceLabels", [])]
        value = rule.get("separator", ";").join(sources)
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", rule.get("replacement", "$1"))
            out[rule["targetLabel"]] = match.expand(replacement)
    return out


def test_the_redis_service_monitor_labels_each_node_as_the_alert_rules_read_it() -> None:
    objects = render({"monitoring": {"serviceMonitor": {"enabled": True}}})
    monitor = find(objects, "ServiceMonitor", f"{FULLNAME}-redis-metrics")
    service = find(objects, "Service", f"{FULLNAME}-redis-metrics")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    pod = f"{FULLNAME}-redis-1"
    # What the operator sets before the endpoint's own relabelings: job = the Service.
    target = {
        "job": service["metadata"]["name"],
        "instance": "10.0.0.7:9121",
        "__meta_kubernetes_pod_name": pod,
    }
    labels = relabelled(target, endpoint["relabelings"])
    assert (labels["job"], labels["instance"]) == ("redis", pod)
    # The job RedisExporterDown reads (deploy/prometheus/alerts.yml, the PrometheusRule).
    alerts = (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    assert 'up{job="' + labels["job"] + '"}' in alerts
{%- endif %}


# --- beat, migrations ------------------------------------------------------------------------
@pytest.mark.reliability("R29")
def test_beat_is_one_pod_replaced_never_doubled(objects: list[Obj]) -> None:
    beat = find(objects, "Deployment", f"{FULLNAME}-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    probe = containers(beat)[-1]["livenessProbe"]["exec"]["command"]
    assert probe[1:3] == ["heartbeat", "/tmp/heartbeat"]


def test_migrations_are_a_plain_job_per_revision_that_app_pods_wait_for(objects: list[Obj]) -> None:
    job = find(objects, "Job", f"{FULLNAME}-migrate-1")
    assert not job["metadata"].get("annotations"), "a hook by default would deadlock --wait"
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert containers(job)[0]["command"] == ["/app/deploy/entrypoints/migrate.sh"]
    for workload in of_kind(objects, "Deployment"):
        init = [c["name"] for c in pod_spec(workload).get("initContainers", [])]
        uses_ledger = "DATABASE_URL_FILE" in env_of(containers(workload)[-1])
        assert (init == ["wait-for-migrations"]) == uses_ledger, workload["metadata"]["name"]


def test_the_migration_hook_is_only_ever_pre_install_or_pre_upgrade() -> None:
    values = {
        "migrations": {"helmHook": True},
        "database": {"external": {"url": "", "existingSecret": "ledger-db"}},
    }
    job = of_kind(render(values), "Job")[0]
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"pre-install", "pre-upgrade"}


# --- Redis -------------------------------------------------------------------------------
@pytest.mark.parametrize("replicas", [3, 5])
@pytest.mark.reliability("R31")
def test_every_redis_pod_has_its_own_announce_service(replicas: int) -> None:
    objects = render({"redis": {"replicas": replicas, "quorum": 2}})
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    assert statefulset["spec"]["replicas"] == replicas
    announce = [
        s
        for s in of_kind(objects, "Service")
        if re.fullmatch(rf"{FULLNAME}-redis-\d+", s["metadata"]["name"])
    ]
    assert len(announce) == replicas
    for service in announce:
        name = service["metadata"]["name"]
        assert service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"] == name
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert {p["port"] for p in service["spec"]["ports"]} == {6379, 26379}
    env = env_of(containers(statefulset)[0])
    nodes = env["REDIS_NODES"]["value"].split()
    assert nodes == [f"{FULLNAME}-redis-{i}.tasks.svc" for i in range(replicas)]


@pytest.mark.parametrize(
    ("mode", "field"),
    [
        ("required", "requiredDuringSchedulingIgnoredDuringExecution"),
        ("preferred", "preferredDuringSchedulingIgnoredDuringExecution"),
        ("none", None),
    ],
)
def test_redis_pods_spread_over_nodes(mode: str, field: str | None) -> None:
    statefulset = find(
        render({"redis": {"antiAffinity": mode}}), "StatefulSet", f"{FULLNAME}-redis"
    )
    affinity: dict[str, Any] = pod_spec(statefulset).get("affinity", {})
    assert list(affinity.get("podAntiAffinity", {})) == ([field] if field else [])


def test_redis_master_hands_over_before_its_pod_stops(objects: list[Obj]) -> None:
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    redis, sentinel = redis_node_containers(statefulset)
    prestop = " ".join(redis["lifecycle"]["preStop"]["exec"]["command"])
    assert "sh /opt/redis-scripts/prestop.sh" in prestop
    grace = pod_spec(statefulset)["terminationGracePeriodSeconds"]
    assert grace > int(env_of(redis)["PRESTOP_TIMEOUT_SECONDS"]["value"])
    assert redis["readinessProbe"]["exec"]["command"][-1] == "redis"
    assert sentinel["readinessProbe"]["exec"]["command"][-1] == "sentinel"
    scripts = find(objects, "ConfigMap", f"{FULLNAME}-redis-scripts")["data"]
    assert {"redis.sh", "sentinel.sh", "prestop.sh", "probe.sh", "persistence.conf"} <= set(scripts)


@pytest.mark.reliability("R32")
def test_redis_uses_the_same_persistence_as_compose(objects: list[Obj]) -> None:
    scripts = find(objects, "ConfigMap", f"{FULLNAME}-redis-scripts")["data"]
    assert (
        scripts["persistence.conf"] == (ROOT / "deploy" / "redis" / "persistence.conf").read_text()
    )


def test_every_disruptable_component_has_a_pdb(objects: list[Obj]) -> None:
    budgets = {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")}
    wanted = {f"{FULLNAME}-api", f"{FULLNAME}-redis"} | {
        f"{FULLNAME}-worker-{g}" for g in WORKER_GROUPS
    }
    assert wanted <= budgets
    for budget in of_kind(objects, "PodDisruptionBudget"):
        assert budget["spec"]["maxUnavailable"] == 1


# --- secrets -------------------------------------------------------------------------------
def secret_values(objects: list[Obj]) -> set[str]:
    return {
        base64.b64decode(value).decode()
        for secret in of_kind(objects, "Secret")
        for value in (secret.get("data") or {}).values()
        if len(base64.b64decode(value)) >= 8
    }


def plain_texts(objects: list[Obj]) -> Iterator[tuple[str, str]]:
    """Every string a pod or ConfigMap shows in the clear: env values, commands, config."""
    for workload in workloads(objects):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            for entry in container.get("env", []):
                if "value" in entry:
                    yield f"{where} env {entry['name']}", str(entry["value"])
            for part in [*container.get("command", []), *container.get("args", [])]:
                yield f"{where} command", str(part)
    for config in of_kind(objects, "ConfigMap"):
        for key, value in (config.get("data") or {}).items():
            yield f"ConfigMap {config['metadata']['name']} {key}", str(value)


SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|DSN|DATABASE_URL|_AUTH$")


def test_no_secret_appears_in_plain_text() -> None:
    values: dict[str, Any] = {"app": {"secretEnv": {"API_TOKEN": "token-value-123456"}}}
    objects = render(values)
    secrets = secret_values(objects)
    assert "token-value-123456" in secrets
    assert "placeholder" in "".join(secrets), "the database URL is not in a Secret"
    for where, text in plain_texts(objects):
        for secret in secrets:
            assert secret not in text, f"{where} shows a secret value"
    for workload in workloads(objects):
        for container in containers(workload):
            files = secret_sources(workload, container)
            for entry in container.get("env", []):
                name = entry["name"].removesuffix("_FILE")
                if SECRET_NAMES.search(name) and entry["name"] != "REDIS_TLS_KEY_FILE":
                    where = f"{container['name']}: {entry['name']}"
                    assert "valueFrom" in entry or name in files, f"{where} has a value"


#: Consumers that read no secret file: the Redis pods' scripts{% if cookiecutter.use_celery_exporter == "yes" %} and the two exporters{% endif %}.
SECRETS_AS_VARIABLES = {"redis", "sentinel"{% if cookiecutter.use_celery_exporter == "yes" %}, "exporter", "metrics"{% endif %}}


def test_app_pods_and_the_database_read_their_secrets_as_files() -> None:
    objects = render({"database": {"internal": {"enabled": True}, "external": {"url": ""}}})
    checked = set()
    for workload in workloads(objects):
        for container in containers(workload):
            if container["name"] in SECRETS_AS_VARIABLES:
                continue
            where = f"{workload['metadata']['name']}/{container['name']}"
            as_variables = [e["name"] for e in container.get("env", []) if "valueFrom" in e]
            assert not as_variables, f"{where}: {as_variables} in the environment"
            for entry in container.get("env", []):
                if entry["name"].endswith("_FILE") and entry["value"].startswith("/run/secrets/"):
                    file_source(workload, container, entry["value"])  # resolves to a key
                    checked.add(entry["name"])
    assert {"REDIS_PASSWORD_FILE", "REDIS_SENTINEL_PASSWORD_FILE", "DATABASE_URL_FILE"} <= checked
    assert "POSTGRES_PASSWORD_FILE" in checked or "MARIADB_PASSWORD_FILE" in checked
{%- if cookiecutter.use_flower == "yes" %}
    assert "FLOWER_PASSWORD_FILE" in checked
{%- endif %}


# What each app process reads from /run/secrets (settings.py requires of a PROCESS_KIND in
# production exactly its own; the API's keys file aside).
REDIS_CLIENT_SECRETS = {"REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"}
SECRETS_OF_KIND = {
    "api": {*REDIS_CLIENT_SECRETS, "DATABASE_URL", "API_KEYS"},
    "worker": {*REDIS_CLIENT_SECRETS, "DATABASE_URL"},
    "beat": {*REDIS_CLIENT_SECRETS, "DATABASE_URL"},
{%- if cookiecutter.use_flower == "yes" %}
    "flower": {*REDIS_CLIENT_SECRETS, "FLOWER_PASSWORD"},
{%- endif %}
    "migrate": {"DATABASE_URL"},
}


def secret_files(workload: Obj, container: Obj) -> dict[str, tuple[str, str]]:
    """Setting -> (Secret, key) of every <NAME>_FILE under /run/secrets of a container."""
    return {
        entry["name"].removesuffix("_FILE"): file_source(workload, container, entry["value"])
        for entry in container.get("env", [])
        if entry["name"].endswith("_FILE") and entry.get("value", "").startswith("/run/secrets/")
    }


def projected_items(workload: Obj) -> set[tuple[str, str]]:
    """(Secret, key) of every item of the pod's projected secret volumes."""
    return {
        (source["secret"]["name"], item["key"])
        for volume in pod_spec(workload).get("volumes", [])
        for source in volume.get("projected", {}).get("sources", [])
        if "secret" in source
        for item in source["secret"].get("items", [])
    }


def test_each_pod_kind_has_its_process_kind_and_only_its_own_secret_files() -> None:
    """Every app container (the wait-for-migrations init containers included) names its
    PROCESS_KIND and reads exactly that kind's secrets; its pod mounts no other; and the
    production settings of that kind start from exactly those."""
    seen = set()
    for workload in workloads(render()):
        spec = pod_spec(workload)
        read: set[tuple[str, str]] = set()
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            kind = env_of(container).get("PROCESS_KIND", {}).get("value")
            files = secret_files(workload, container)
            read |= set(files.values())
            where = f"{workload['metadata']['name']}/{container['name']}"
            if kind is None:
                assert not files, f"{where}: secret files without a PROCESS_KIND"
                continue
            expected = component_of(workload) if container in spec["containers"] else "migrate"
            assert kind == expected, where
            assert set(files) == SECRETS_OF_KIND[kind], where
            given: dict[str, Any] = {n.lower(): f"{n.lower()}-a-strong-value" for n in files}
            given.pop("api_keys", None)
            if "database_url" in given:
                given["database_url"] = "postgresql+psycopg://app:a-strong-value@db/app"
            for name in ("redis_password", "redis_sentinel_password"{% if cookiecutter.use_flower == "yes" %}, "flower_password"{% endif %}):
                given.setdefault(name, "")
            try:
                Settings(environment="production", process_kind=kind, **given)
            except ValidationError as refused:
                pytest.fail(f"{where} would not start in production: {refused}")
            seen.add(kind)
        # The pod's projected secret volume holds what its containers read, nothing more.
        assert projected_items(workload) <= read, workload["metadata"]["name"]
    assert seen == set(SECRETS_OF_KIND)


def test_existing_secrets_replace_the_generated_ones() -> None:
    values = {
        "app": {"existingSecret": "my-app"},
        "api": {"auth": {"keysSecret": "my-keys"}},
        "redis": {"auth": {"existingSecret": "my-redis"}},
        "database": {"external": {"url": "", "existingSecret": "my-db", "urlKey": "dsn"}},
{%- if cookiecutter.use_flower == "yes" %}
        "flower": {"existingSecret": "my-flower"},
{%- endif %}
    }
    objects = render(values)
    assert not of_kind(objects, "Secret"), "a Secret is still generated"
    deployment = find(objects, "Deployment", f"{FULLNAME}-api")
    api = containers(deployment)[-1]
    sources = secret_sources(deployment, api)
    assert sources["DATABASE_URL"] == ("my-db", "dsn")
    assert sources["REDIS_PASSWORD"][0] == "my-redis"
    assert {"secretRef": {"name": "my-app"}} in api["envFrom"]


def test_pods_roll_when_their_settings_change(objects: list[Obj]) -> None:
    changed = render({"app": {"env": {"LOG_LEVEL": "DEBUG"}}})
    before = find(objects, "Deployment", f"{FULLNAME}-api")["spec"]["template"]["metadata"][
        "annotations"
    ]
    after = find(changed, "Deployment", f"{FULLNAME}-api")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert before["checksum/app-config"] != after["checksum/app-config"]
    assert config_value(changed, "LOG_LEVEL") == "DEBUG"


# --- everywhere -------------------------------------------------------------------------------
def test_every_pod_runs_restricted(objects: list[Obj]) -> None:
    for workload in workloads(
        render({"database": {"internal": {"enabled": True}, "external": {"url": ""}}})
    ):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            context = container["securityContext"]
            where = f"{name}/{container['name']}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert container["resources"]["requests"], where
            assert container["resources"]["limits"], where
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"


def test_app_pods_run_as_the_image_user(objects: list[Obj]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"ARG APP_UID=(\d+)", dockerfile)
    assert found, "the Dockerfile names no APP_UID"
    uid = int(found.group(1))
    for workload in workloads(objects):
        spec = pod_spec(workload)
        image = containers(workload)[-1]["image"]
        if image.startswith(f"{CHART_NAME}:"):
            assert spec["securityContext"]["runAsUser"] == uid, workload["metadata"]["name"]


def test_extras_reach_their_component_only() -> None:
    extra = {
        "extraEnv": [{"name": "EXTRA_SETTING", "value": "on"}],
        "extraVolumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "extraVolumeMounts": [{"name": "certs", "mountPath": "/certs"}],
        "podLabels": {"extra": "yes"},
    }
    objects = render({"api": extra})
    api = find(objects, "Deployment", f"{FULLNAME}-api")
    beat = find(objects, "Deployment", f"{FULLNAME}-beat")
    assert "EXTRA_SETTING" in env_of(containers(api)[-1])
    assert "EXTRA_SETTING" not in env_of(containers(beat)[-1])
    assert {"name": "certs", "mountPath": "/certs"} in containers(api)[-1]["volumeMounts"]
    assert {"name": "certs", "secret": {"secretName": "ca"}} in pod_spec(api)["volumes"]
    assert api["spec"]["template"]["metadata"]["labels"]["extra"] == "yes"


@pytest.mark.parametrize(
    ("component", "kind", "name"),
    [
        ("redis", "StatefulSet", "redis"),
{%- if cookiecutter.use_celery_exporter == "yes" %}
        ("exporter", "Deployment", "exporter"),
{%- endif %}
    ],
)
def test_third_party_pods_take_extra_volumes_too(component: str, kind: str, name: str) -> None:
    volume = {"name": "certs", "secret": {"secretName": "ca"}}
    mount = {"name": "certs", "mountPath": "/certs", "readOnly": True}
    extra = {"extraVolumes": [volume], "extraVolumeMounts": [mount]}
    workload = find(render({component: extra}), kind, f"{FULLNAME}-{name}")
    assert volume in pod_spec(workload)["volumes"]
    for container in containers(workload):
        assert mount in container["volumeMounts"], container["name"]


def test_api_probes_ask_readiness_of_dependencies_and_liveness_of_the_process(
    objects: list[Obj],
) -> None:
    api = containers(find(objects, "Deployment", f"{FULLNAME}-api"))[-1]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_optional_api_objects_render_when_asked() -> None:
    objects = render(
        {
            "api": {
                "ingress": {"enabled": True, "className": "nginx"},
                "autoscaling": {"enabled": True},
            }
        }
    )
    ingress = find(objects, "Ingress", f"{FULLNAME}-api")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    find(objects, "HorizontalPodAutoscaler", f"{FULLNAME}-api")
    assert "replicas" not in find(objects, "Deployment", f"{FULLNAME}-api")["spec"]


def test_network_policies_can_be_turned_off() -> None:
    assert not of_kind(render({"networkPolicies": {"enabled": False}}), "NetworkPolicy")


def test_the_in_chart_database_is_one_pod_with_its_own_generated_password() -> None:
    objects = render({"database": {"internal": {"enabled": True}, "external": {"url": ""}}})
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-db")
    assert statefulset["spec"]["replicas"] == 1
    secret = find(objects, "Secret", f"{FULLNAME}-database")["data"]
    password = base64.b64decode(secret["password"]).decode()
    url = base64.b64decode(secret["url"]).decode()
    assert len(password) >= 16
    assert f":{password}@{FULLNAME}-db:" in url


def test_the_api_reads_its_keys_from_a_mounted_file_and_its_bounds_from_values() -> None:
    entry = {"name": "ci", "sha256": "a" * 64, "scopes": ["tasks:submit"]}
    objects = render({"api": {"auth": {"keys": [entry]}, "maxBacklog": {"low": 7}}})
    document = find(objects, "Secret", f"{FULLNAME}-api-keys")["stringData"]["keys.json"]
    assert json.loads(document) == {"keys": [entry]}
    deployment = find(objects, "Deployment", f"{FULLNAME}-api")
    api = containers(deployment)[-1]
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["API_KEYS_FILE"] == "/run/secrets/api-keys/keys.json"
    assert env["API_MAX_BACKLOG_LOW"] == "7"
    assert f"{FULLNAME}-api" in env["API_TRUSTED_HOSTS"].split(",")
    assert "API_OIDC_ISSUER" not in env
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == f"{FULLNAME}-api-keys"
    mounts = {m["name"]: m for m in api["volumeMounts"]}
    assert mounts["api-keys"] == {
        "name": "api-keys",
        "mountPath": "/run/secrets/api-keys",
        "readOnly": True,
    }


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (
            {"api": {"auth": {"keys": [{"name": "x", "sha256": "b" * 64, "scopes": ["all"]}]}}},
            "/api/auth/keys/0/scopes/0",
        ),
        ({"api": {"auth": {"oidc": {"issuer": "https://id.example"}}}}, "api.auth.oidc"),
        ({"api": {"rateLimit": "lots"}}, "/api/rateLimit"),
    ],
)
def test_bad_access_values_fail_with_the_key_named(values: dict[str, Any], named: str) -> None:
    assert named in render_error(values)
