"""The Helm chart's objects fit together: the class of bug a linter cannot see.

Every reference names something rendered (or a Secret the values say exists), every
selector selects pods, every probe and Service port is a port a container declares, the
Redis addresses name real Services, and the network policies allow exactly the
connections the configuration implies.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness.chart import (
    FULLNAME,
    NAMESPACE,
    Obj,
    containers,
    find,
    of_kind,
    pod_spec,
    render,
    workloads,
)
from tests.harness.redis import acl_rules

DATABASE_PORT = {% if cookiecutter.database == "mysql" %}3306{% else %}5432{% endif %}
EXISTING = {
    "app": {"existingSecret": "my-app"},
    "redis": {"auth": {"existingSecret": "my-redis"}},
    "database": {"external": {"url": "", "existingSecret": "my-db", "urlKey": "dsn"}},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "in-chart-database": {"database": {"internal": {"enabled": True}, "external": {"url": ""}}},
    "existing-secrets": EXISTING,
    "redis-tls": {
        "redis": {
            "tls": {"enabled": True, "secretName": "redis-tls", "clientSecretName": "redis-client"}
        },
        "workers": {"groups": {"low": {"autoscaling": {"mode": "keda"}}}},
    },
    "autoscaled": {
        "api": {"autoscaling": {"enabled": True}, "ingress": {"enabled": True}},
        "workers": {
            "groups": {
                "high": {"autoscaling": {"mode": "hpa"}},
                "low": {"autoscaling": {"mode": "keda", "minReplicas": 0}},
            }
        },
{%- if cookiecutter.use_celery_exporter == "yes" %}
        "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
{%- endif %}
    },
}
PARAMS = pytest.mark.parametrize("values", list(VALUE_SETS.values()), ids=list(VALUE_SETS))


@dataclass(frozen=True)
class Pod:
    """A pod template of a workload: its labels and the ports its containers declare."""

    owner: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # port name (or str(number)) -> number


def pods(objects: list[Obj]) -> list[Pod]:
    found = []
    for workload in workloads(objects):
        ports: dict[str, int] = {}
        for container in containers(workload):
            for port in container.get("ports", []):
                ports[str(port["containerPort"])] = port["containerPort"]
                if "name" in port:
                    ports[port["name"]] = port["containerPort"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        found.append(Pod(workload["metadata"]["name"], labels, ports))
    return found


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def statefulset_pod_labels(objects: list[Obj], pod: Pod) -> list[dict[str, str]]:
    """A StatefulSet's pods also carry their own name (the announce Services select it)."""
    owner = next(o for o in workloads(objects) if o["metadata"]["name"] == pod.owner)
    if owner["kind"] != "StatefulSet":
        return [dict(pod.labels)]
    return [
        {**pod.labels, "statefulset.kubernetes.io/pod-name": f"{pod.owner}-{i}"}
        for i in range(owner["spec"]["replicas"])
    ]


# --- references ----------------------------------------------------------------------------
def references(obj: Obj) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret/ConfigMap a workload or KEDA object uses."""
    spec = pod_spec(obj)
    for container in containers(obj):
        for entry in container.get("env", []):
            source = entry.get("valueFrom", {})
            if "secretKeyRef" in source:
                yield "Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]
            if "configMapKeyRef" in source:
                yield (
                    "ConfigMap",
                    source["configMapKeyRef"]["name"],
                    source["configMapKeyRef"]["key"],
                )
        for entry in container.get("envFrom", []):
            if "secretRef" in entry:
                yield "Secret", entry["secretRef"]["name"], None
            if "configMapRef" in entry:
                yield "ConfigMap", entry["configMapRef"]["name"], None
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                for item in source["secret"].get("items") or [{"key": None}]:
                    yield "Secret", source["secret"]["name"], item["key"]
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None
    if obj["kind"] == "TriggerAuthentication":
        for ref in obj["spec"]["secretTargetRef"]:
            yield "Secret", ref["name"], ref["key"]


@PARAMS
def test_every_secret_and_configmap_reference_resolves(values: dict[str, Any]) -> None:
    objects = render(values)
    held = {
        (obj["kind"], obj["metadata"]["name"]): set((obj.get("data") or {}).keys())
        for obj in of_kind(objects, "Secret", "ConfigMap")
    }
    # Secrets the values say the user created, with the keys the values name (the Redis
    # Secret: a password per user of users.acl; TLS: cert-manager's layout).
    redis_keys = {f"redis-{user}" for user in acl_rules("redis")}
    redis_keys |= {f"sentinel-{user}" for user in acl_rules("sentinel")}
    external: dict[tuple[str, str], set[str] | None] = {}
    if values is EXISTING:
        external[("Secret", "my-app")] = None
        external[("Secret", "my-redis")] = redis_keys
        external[("Secret", "my-db")] = {"dsn"}
    tls = values.get("redis", {}).get("tls", {})
    if tls.get("secretName"):
        external[("Secret", tls["secretName"])] = {"ca.crt", "tls.crt", "tls.key"}
    if tls.get("clientSecretName"):
        external[("Secret", tls["clientSecretName"])] = {"tls.crt", "tls.key"}
    checked = 0
    for obj in objects:
        for kind, name, key in references(obj):
            checked += 1
            where = f"{obj['kind']} {obj['metadata']['name']} -> {kind} {name} key {key}"
            if (kind, name) in held:
                assert key is None or key in held[(kind, name)], where
            else:
                assert (kind, name) in external, f"{where}: not rendered"
                keys = external[(kind, name)]
                assert key is None or keys is None or key in keys, where
    assert checked > 20


@PARAMS
def test_every_selector_selects_pods_and_every_target_port_is_declared(
    values: dict[str, Any],
) -> None:
    objects = render(values)
    templates = pods(objects)
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        matched = [
            pod
            for pod in templates
            if any(selects(selector, labels) for labels in statefulset_pod_labels(objects, pod))
        ]
        name = service["metadata"]["name"]
        assert matched, f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            target = str(port.get("targetPort", port["port"]))
            for pod in matched:
                assert target in pod.ports, f"Service {name}: {pod.owner} declares no port {target}"
    for obj in of_kind(objects, "PodDisruptionBudget"):
        selector = obj["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, p.labels) for p in templates), obj["metadata"]["name"]
    for workload in of_kind(objects, "Deployment", "StatefulSet"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, workload["spec"]["template"]["metadata"]["labels"])
        others = [p for p in templates if p.owner != workload["metadata"]["name"]]
        assert not any(selects(selector, p.labels) for p in others), "two workloads share pods"


@PARAMS
def test_every_probe_port_is_a_declared_container_port(values: dict[str, Any]) -> None:
    for workload in workloads(render(values)):
        for container in containers(workload):
            declared = {str(p["containerPort"]) for p in container.get("ports", [])}
            declared |= {p["name"] for p in container.get("ports", []) if "name" in p}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                handler = container.get(probe, {})
                for kind in ("httpGet", "tcpSocket"):
                    if kind in handler:
                        port = str(handler[kind]["port"])
                        assert port in declared, (
                            f"{container['name']} {probe} on undeclared port {port}"
                        )


@PARAMS
def test_scale_targets_and_backends_exist(values: dict[str, Any]) -> None:
    objects = render(values)
    deployments = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    for obj in of_kind(objects, "HorizontalPodAutoscaler", "ScaledObject"):
        assert obj["spec"]["scaleTargetRef"]["name"] in deployments
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                port_names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in port_names
    for statefulset in of_kind(objects, "StatefulSet"):
        assert statefulset["spec"]["serviceName"] in services
    for monitor in of_kind(objects, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services.values() if selects(selector, s["metadata"]["labels"])]
        assert matched, monitor["metadata"]["name"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert all(endpoint["port"] in {p["name"] for p in s["spec"]["ports"]} for s in matched)


# --- Redis addresses -------------------------------------------------------------------------
ADDRESS = re.compile(rf"^(?P<service>[a-z0-9-]+)\.{NAMESPACE}\.svc:(?P<port>\d+)$")


def sentinel_addresses(objects: list[Obj]) -> Iterator[tuple[str, str]]:
    """(who, host:port) of every sentinel address the app, KEDA{% if cookiecutter.use_celery_exporter == "yes" %} and the exporter{% endif %} use."""
    config = find(objects, "ConfigMap", f"{FULLNAME}-app")["data"]
    for address in config["REDIS_SENTINELS"].split(","):
        yield "app REDIS_SENTINELS", address
    for scaled in of_kind(objects, "ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            for address in trigger["metadata"]["addresses"].split(","):
                yield f"ScaledObject {scaled['metadata']['name']}", address
{%- if cookiecutter.use_celery_exporter == "yes" %}
    exporter = containers(find(objects, "Deployment", f"{FULLNAME}-exporter"))[-1]
    url = next(e["value"] for e in exporter["env"] if e["name"] == "CE_BROKER_URL")
    for broker in url.split(";"):
        # Its own user `exporter` (users.acl), its password expanded by the kubelet.
        match = re.fullmatch(
            r"sentinel://exporter:\$\(REDIS_PASSWORD\)@(?P<address>[^/]+)/0", broker
        )
        assert match, broker
        yield "exporter CE_BROKER_URL", match["address"]
{%- endif %}


def test_sentinel_addresses_name_real_services_and_ports() -> None:
    objects = render(VALUE_SETS["autoscaled"])
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    seen: dict[str, set[str]] = {}
    for who, address in sentinel_addresses(objects):
        match = ADDRESS.match(address)
        assert match, f"{who}: {address} is not <service>.{NAMESPACE}.svc:<port>"
        service = services.get(match["service"])
        assert service is not None, f"{who}: no Service {match['service']}"
        assert int(match["port"]) in {p["port"] for p in service["spec"]["ports"]}, who
        seen.setdefault(who.split()[0], set()).add(address)
    statefulset = find(objects, "StatefulSet", f"{FULLNAME}-redis")
    wanted = {
        f"{FULLNAME}-redis-{i}.{NAMESPACE}.svc:26379"
        for i in range(statefulset["spec"]["replicas"])
    }
    for who, addresses in seen.items():
        assert addresses == wanted, f"{who} does not list every sentinel"
    assert {"app", "ScaledObject"} <= set(seen)


def test_external_redis_is_used_everywhere_instead_of_the_chart_s() -> None:
    sentinels = ["s1.redis.example:26379", "s2.redis.example:26379"]
    objects = render(
        {
            "redis": {
                "enabled": False,
                "external": {"sentinels": sentinels, "masterName": "prod"},
                "auth": {"existingSecret": "my-redis"},
            }
        }
    )
    assert not [
        o for o in objects if "redis" in o["metadata"]["name"] and o["kind"] != "NetworkPolicy"
    ]
    config = find(objects, "ConfigMap", f"{FULLNAME}-app")["data"]
    assert config["REDIS_SENTINELS"] == ",".join(sentinels)
    assert config["REDIS_MASTER_NAME"] == "prod"


# --- network policies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    """Somewhere traffic comes from or goes to, for the policy evaluator."""

    labels: Mapping[str, str]
    namespace: str = NAMESPACE
    namespace_labels: Mapping[str, str] | None = None

    def ns_labels(self) -> Mapping[str, str]:
        return self.namespace_labels or {"kubernetes.io/metadata.name": self.namespace}


DNS = Peer({"k8s-app": "kube-dns"}, "kube-system")
OUTSIDE = Peer({}, "elsewhere")  # a pod in another namespace, or anything outside the cluster


def peer_matches(rule_peers: list[Obj] | None, peer: Peer, policy_namespace: str) -> bool:
    """Whether a rule's `from`/`to` admits `peer` (absent = everyone)."""
    if rule_peers is None:
        return True
    for entry in rule_peers:
        if "ipBlock" in entry:
            if peer is OUTSIDE:
                return True
            continue
        if "namespaceSelector" in entry:
            namespace_ok = selects(
                entry["namespaceSelector"].get("matchLabels", {}), peer.ns_labels()
            )
        else:
            namespace_ok = peer.namespace == policy_namespace
        pod_ok = selects(entry.get("podSelector", {}).get("matchLabels", {}), peer.labels)
        if namespace_ok and pod_ok:
            return True
    return False


def port_matches(rule_ports: list[Obj] | None, port: int, protocol: str) -> bool:
    if rule_ports is None:
        return True
    return any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in rule_ports)


def policies_for(policies: list[Obj], labels: Mapping[str, str], direction: str) -> list[Obj]:
    kind = direction.capitalize()
    return [
        p
        for p in policies
        if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)
        and kind in p["spec"]["policyTypes"]
    ]


def allowed(
    policies: list[Obj], source: Peer, target: Peer, port: int, protocol: str = "TCP"
) -> bool:
    """Both ends agree: the source's egress (if its namespace is ours) and the target's ingress."""
    for end, other, direction in ((source, target, "egress"), (target, source, "ingress")):
        if end.namespace != NAMESPACE:
            continue  # policies of other namespaces are not the chart's
        selected = policies_for(policies, end.labels, direction)
        if not selected:
            continue  # a pod no policy selects is open
        peers = "to" if direction == "egress" else "from"
        if not any(
            port_matches(rule.get("ports"), port, protocol)
            and peer_matches(rule.get(peers), other, NAMESPACE)
            for policy in selected
            for rule in policy["spec"].get(direction, [])
        ):
            return False
    return True


def component(pod: Pod) -> str:
    return pod.labels["app.kubernetes.io/component"]


# Who talks to Redis (the sentinels and nodes among themselves too) and to the database.
REDIS_CLIENTS = (
    "api",
    "worker",
    "beat",
{%- if cookiecutter.use_flower == "yes" %}
    "flower",
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    "exporter",
{%- endif %}
    "redis",
)
DATABASE_CLIENTS = ("api", "worker", "beat", "migrate")


def expected_flows(values: Mapping[str, Any]) -> set[tuple[str, str, int]]:
    """(from component, to component, port) for every connection the stack makes."""
    flows: set[tuple[str, str, int]] = set()
    for client in REDIS_CLIENTS:
        flows |= {(client, "redis", 6379), (client, "redis", 26379)}
    internal = values.get("database", {}).get("internal", {}).get("enabled", False)
    if internal:
        flows |= {(client, "database", DATABASE_PORT) for client in DATABASE_CLIENTS}
    # From outside the release: users to the API{% if cookiecutter.use_flower == "yes" %} and Flower{% endif %}, Prometheus to the metrics ports{% if cookiecutter.use_celery_exporter == "yes" %}
    # (the Redis pods' redis_exporter among them){% endif %}.
    flows |= {("outside", "api", 8000)}
{%- if cookiecutter.use_flower == "yes" %}
    flows |= {("outside", "flower", 5555)}
{%- endif %}
{%- if cookiecutter.use_celery_exporter == "yes" %}
    flows |= {("outside", "exporter", 9808), ("outside", "redis", 9121)}
{%- endif %}
    return flows


@pytest.mark.parametrize("name", ["defaults", "in-chart-database"])
def test_network_policies_allow_exactly_the_stack_s_connections(name: str) -> None:
    values = VALUE_SETS[name]
    objects = render(values)
    policies = of_kind(objects, "NetworkPolicy")
    templates = pods(objects)
    peers = {component(pod): Peer(pod.labels) for pod in templates}
    peers["outside"] = OUTSIDE
    wanted = expected_flows(values)
    actual = {
        (source_name, component(target), port)
        for target in templates
        for port in set(target.ports.values())
        for source_name, source in peers.items()
        if allowed(policies, source, Peer(target.labels), port)
    }
    assert actual == wanted, (
        f"missing {sorted(wanted - actual)}, unexpected {sorted(actual - wanted)}"
    )
    external_database = Peer({}, "databases")
    internal = values.get("database", {}).get("internal", {}).get("enabled", False)
    for pod in templates:
        # Every pod but the in-chart database (which connects to nothing) resolves names.
        resolves = allowed(policies, Peer(pod.labels), DNS, 53, "UDP")
        assert resolves == (component(pod) != "database"), f"{pod.owner}: DNS allowed={resolves}"
        client = any(key.endswith("/database-client") for key in pod.labels)
        reaches = allowed(policies, Peer(pod.labels), external_database, DATABASE_PORT)
        assert reaches == (client and not internal), (
            f"{pod.owner} reaches an outside database: {reaches}"
        )


def test_keda_reaches_redis_only_when_a_group_uses_it() -> None:
    keda = Peer({"app": "keda-operator"}, "keda")
    redis = Peer(next(p.labels for p in pods(render()) if component(p) == "redis"))
    assert not allowed(of_kind(render(), "NetworkPolicy"), keda, redis, 26379)
    scaled = render({"workers": {"groups": {"low": {"autoscaling": {"mode": "keda"}}}}})
    assert allowed(of_kind(scaled, "NetworkPolicy"), keda, redis, 26379)
    assert allowed(of_kind(scaled, "NetworkPolicy"), keda, redis, 6379)


def test_restricting_who_reaches_the_api_keeps_metrics_scrapes() -> None:
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    gateway = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}}
    objects = render(
        {"networkPolicies": {"apiIngressFrom": [gateway], "metricsFrom": [monitoring]}}
    )
    policies = of_kind(objects, "NetworkPolicy")
    api = Peer(next(p.labels for p in pods(objects) if component(p) == "api"))
    assert allowed(policies, Peer({}, "gateway"), api, 8000)
    assert allowed(policies, Peer({}, "monitoring"), api, 8000)
    assert not allowed(policies, Peer({}, "elsewhere"), api, 8000)
{%- if cookiecutter.use_celery_exporter == "yes" %}


def test_redis_exporter_port_is_open_to_metrics_from_only() -> None:
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    values: dict[str, Any] = {"networkPolicies": {"metricsFrom": [monitoring]}}
    objects = render(values)
    policies = of_kind(objects, "NetworkPolicy")
    templates = pods(objects)
    redis = next(pod for pod in templates if component(pod) == "redis")
    assert redis.ports["metrics"] == 9121
    target = Peer(redis.labels)
    assert allowed(policies, Peer({}, "monitoring"), target, 9121)
    assert not allowed(policies, Peer({}, "elsewhere"), target, 9121)
    # Prometheus gets the metrics, never the node itself.
    assert not allowed(policies, Peer({}, "monitoring"), target, 6379)
    for pod in templates:
        if component(pod) != "redis":
            assert not allowed(policies, Peer(pod.labels), target, 9121), pod.owner
    # Turned off, the port is closed again.
    values["redis"] = {"metrics": {"enabled": False}}
    closed = of_kind(render(values), "NetworkPolicy")
    assert not allowed(closed, Peer({}, "monitoring"), target, 9121)
{%- endif %}
