"""The Helm chart's Redis StatefulSet on loopback, run through the chart's own scripts.

One `RedisPod` per ordinal, each with its two containers as real processes: `redis`
(`files/redis/redis.sh`) and `sentinel` (`files/redis/sentinel.sh`), which exec
redis-server as they do in the pod. Pod i listens on its own loopback address
127.0.2.<i+1> (all of 127/8 is loopback on Linux), which stands in for its announce
Service, so every pod uses the same REDIS_PORT and SENTINEL_PORT, as in Kubernetes. The
environment is the chart's contract (see lib.sh), with short Sentinel timings: the users
of deploy/redis/users.acl (the chart ships that file), each with a fresh password, and with
`tls` a certificate (tests/harness/tls.py) every node and sentinel serves, TLS only.

    with RedisStatefulSet(tmp_path) as statefulset:
        master = statefulset.wait_healthy()
        master.kill()
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, cast

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.harness.binaries import require_binary
from tests.harness.ports import free_port
from tests.harness.probes import wait_until
from tests.harness.processes import SupervisedProcess, stop_each
from tests.harness.redis import (
    ADMIN_USER,
    MASTER_NAME,
    SENTINEL_ADMIN_USER,
    USERS_ACL,
    Users,
)
from tests.harness.tls import Certificates

PROJECT_DIR = Path(__file__).resolve().parents[2]
CHART_DIR = PROJECT_DIR / "deploy" / "helm" / "{{ cookiecutter.project_slug }}"
SCRIPTS_DIR = CHART_DIR / "files" / "redis"
# The chart ships the same file as files/redis/persistence.conf.
PERSISTENCE_CONF = PROJECT_DIR / "deploy" / "redis" / "persistence.conf"
#: The release's fullname: prefix of the pod names and seed of the sentinel ids.
FULLNAME = "rel-app"
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 6000
#: Errors of a node that is down, starting or cut off: "no answer" for the caller.
UNREACHABLE = (redis_py.RedisError, OSError)


def pod_host(ordinal: int) -> str:
    return f"127.0.2.{ordinal + 1}"


def expected_myid(seed: str, ordinal: int) -> str:
    """What sentinel.sh sets as `sentinel myid`: sha1 of "<seed>-<ordinal>"."""
    return hashlib.sha1(f"{seed}-{ordinal}".encode()).hexdigest()


def port_free_on(hosts: list[str]) -> int:
    """A port nobody listens on at any of `hosts` (each pod binds the same one)."""
    for _ in range(100):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


class RedisPod:
    """One pod of the StatefulSet: its redis and sentinel containers and its directories."""

    def __init__(self, statefulset: RedisStatefulSet, ordinal: int) -> None:
        self.statefulset = statefulset
        self.ordinal = ordinal
        self.host = pod_host(ordinal)
        self.name = f"{statefulset.fullname}-redis-{ordinal}"
        pod_dir = statefulset.workdir / self.name
        # The pod's emptyDir (generated config) and its PersistentVolumeClaim (data).
        self.conf_dir = pod_dir / "run"
        self.data_dir = pod_dir / "data"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = statefulset.pod_env(self)
        self.redis = self._container("redis", "redis.sh")
        self.sentinel = self._container("sentinel", "sentinel.sh")

    def __repr__(self) -> str:
        return f"<RedisPod {self.name} {self.host}>"

    def _container(self, name: str, script: str) -> SupervisedProcess:
        return SupervisedProcess(
            f"{self.name}-{name}",
            ["sh", str(SCRIPTS_DIR / script)],
            env=self.env,
            cwd=self.data_dir,
            log_dir=self.statefulset.workdir / "logs",
            # The test plays the kubelet: it decides when a container comes back.
            restart=False,
        )

    @property
    def containers(self) -> list[SupervisedProcess]:
        return [self.redis, self.sentinel]

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        for container in self.containers:
            container.start()

    def kill(self) -> None:
        """SIGKILL both containers, as when the pod's node dies."""
        for container in self.containers:
            if container.running:
                container.kill(signal.SIGKILL)
                container.wait_for_exit(10)

    def restart(self) -> None:
        """Start the killed containers again, through the scripts."""
        for container in self.containers:
            container.respawn()

    def run(self, script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run one of the chart's scripts in this pod (a probe, the preStop hook)."""
        return subprocess.run(
            ["sh", str(SCRIPTS_DIR / script), *args],
            env=self.env,
            cwd=self.data_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    # --- what the pod's servers say (None: no answer) -----------------------------------

    def _client(self, port: int, username: str, password: str) -> redis_py.Redis:
        return redis_py.Redis(
            host=self.host,
            port=port,
            username=username,
            password=password,
            socket_timeout=1,
            socket_connect_timeout=0.5,
            decode_responses=True,
            # One try: a node that is down answers "no answer" at once, not after retries.
            retry=Retry(NoBackoff(), 0),
            **self.statefulset.tls_options(),
        )

    def redis_client(self, user: str = ADMIN_USER) -> redis_py.Redis:
        """A client of this pod's redis as `user` of users.acl (the operators' by default)."""
        password = self.statefulset.users.password(user)
        return self._client(self.statefulset.redis_port, user, password)

    def sentinel_client(self, user: str = SENTINEL_ADMIN_USER) -> redis_py.Redis:
        password = self.statefulset.users.password(user, "sentinel")
        return self._client(self.statefulset.sentinel_port, user, password)

    def role(self) -> str | None:
        """ROLE of this pod's redis: master, slave, or None when it does not answer."""
        try:
            with self.redis_client() as client:
                reply = client.execute_command("ROLE")
        except UNREACHABLE:
            return None
        return str(reply[0])

    def replication(self) -> dict[str, Any]:
        with self.redis_client() as client:
            return cast(dict[str, Any], client.info("replication"))

    def config(self, name: str) -> str:
        with self.redis_client() as client:
            return str(cast(dict[str, Any], client.config_get(name))[name])

    def sentinel_master(self) -> str | None:
        """The master host this pod's sentinel names, or None."""
        try:
            with self.sentinel_client() as client:
                reply = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        except UNREACHABLE:
            return None
        return None if not reply else str(cast(tuple[str, int], reply)[0])

    def sentinel_state(self) -> dict[str, Any]:
        """SENTINEL MASTER as redis-py parses it (num-slaves, num-other-sentinels...)."""
        with self.sentinel_client() as client:
            return cast(dict[str, Any], client.sentinel_master(MASTER_NAME))

    def sentinel_myid(self) -> str | None:
        try:
            with self.sentinel_client() as client:
                return str(client.execute_command("SENTINEL", "MYID"))
        except UNREACHABLE:
            return None


class RedisStatefulSet:
    """`replicas` pods, started together as the chart's podManagementPolicy: Parallel does."""

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 3,
        fullname: str = FULLNAME,
        tls: Certificates | None = None,
    ) -> None:
        require_binary("redis-server", "redis-server")
        require_binary("redis-cli", "redis-tools")
        self.workdir = workdir
        self.fullname = fullname
        hosts = [pod_host(ordinal) for ordinal in range(replicas)]
        self.nodes = " ".join(hosts)
        self.redis_port = port_free_on(hosts)
        self.sentinel_port = port_free_on(hosts)
        self.users = Users()
        self.tls = tls
        self.pods = [RedisPod(self, ordinal) for ordinal in range(replicas)]

    def __repr__(self) -> str:
        return f"<RedisStatefulSet {self.fullname} {self.pods}>"

    def tls_options(self) -> dict[str, Any]:
        """redis-py's TLS arguments: the CA only, as the chart's scripts (no client cert).

        The certificate names 127.0.0.1, not the pods' 127.0.2.x: the name is not checked
        here (neither redis-cli nor Redis's replication links check it either).
        """
        if self.tls is None:
            return {}
        return {"ssl": True, "ssl_ca_certs": str(self.tls.ca), "ssl_check_hostname": False}

    def password_env(self) -> dict[str, str]:
        """Every user's password, as the chart's StatefulSet gives them from its Secret."""
        return {
            f"{where.upper()}_USER_{user.upper().replace('-', '_')}_PASSWORD": password
            for where, passwords in self.users.passwords.items()
            for user, password in passwords.items()
        }

    def tls_env(self) -> dict[str, str]:
        if self.tls is None:
            return {"REDIS_TLS": "false"}
        return {
            "REDIS_TLS": "true",
            "REDIS_TLS_CA_FILE": str(self.tls.ca),
            "REDIS_TLS_CERT_FILE": str(self.tls.server_cert),
            "REDIS_TLS_KEY_FILE": str(self.tls.server_key),
        }

    def pod_env(self, pod: RedisPod) -> dict[str, str]:
        """The chart's environment of one pod (REDIS_ORDINAL left to HOSTNAME, as in k8s)."""
        redis_server = require_binary("redis-server", "redis-server")
        return {
            "PATH": f"{os.path.dirname(redis_server)}:/usr/bin:/bin",
            "HOSTNAME": pod.name,
            "REDIS_NODES": self.nodes,
            "REDIS_PORT": str(self.redis_port),
            "SENTINEL_PORT": str(self.sentinel_port),
            # A pod binds its own address only: the three share each port.
            "REDIS_BIND": pod.host,
            "REDIS_MASTER_NAME": MASTER_NAME,
            "REDIS_USERS_ACL": str(USERS_ACL),
            **self.password_env(),
            **self.tls_env(),
            "SENTINEL_QUORUM": "2",
            "SENTINEL_DOWN_AFTER_MS": str(DOWN_AFTER_MS),
            "SENTINEL_FAILOVER_TIMEOUT_MS": str(FAILOVER_TIMEOUT_MS),
            # The chart's default: a master takes writes only with a replica connected.
            "REDIS_MIN_REPLICAS_TO_WRITE": "1",
            "REDIS_CONF_DIR": str(pod.conf_dir),
            "REDIS_DATA_DIR": str(pod.data_dir),
            "REDIS_PERSISTENCE_CONF": str(PERSISTENCE_CONF),
            "SENTINEL_ID_SEED": self.fullname,
            # A hook that never sees the handover fails its test in 20 s, not the chart's 60.
            "PRESTOP_TIMEOUT_SECONDS": "20",
        }

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> RedisStatefulSet:
        try:
            for pod in self.pods:
                pod.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # Sentinels first: none may fail over while the nodes go down one by one.
        containers = [pod.sentinel for pod in self.pods] + [pod.redis for pod in self.pods]
        stop_each(containers, str(self))

    def __enter__(self) -> RedisStatefulSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- topology ---------------------------------------------------------------------

    def pod_at(self, host: str) -> RedisPod:
        for pod in self.pods:
            if pod.host == host:
                return pod
        raise KeyError(f"no pod announces {host}")

    def live_pods(self) -> list[RedisPod]:
        return [pod for pod in self.pods if pod.redis.running]

    def agreed_master(self) -> RedisPod | None:
        """The master every running sentinel names, if they agree and it says it is master."""
        named = {pod.sentinel_master() for pod in self.pods if pod.sentinel.running}
        if len(named) != 1:
            return None
        (host,) = named
        if host is None:
            return None
        master = self.pod_at(host)
        return master if master.role() == "master" else None

    def wait_healthy(self, timeout: float = 30) -> RedisPod:
        """The sentinels agree on a live master, every live replica is in sync with it, and
        every sentinel knows every live replica and sentinel (so a failover can happen)."""

        def healthy() -> RedisPod | None:
            try:
                return self._healthy_master()
            except UNREACHABLE:
                return None

        return wait_until(healthy, timeout, f"{self} healthy")

    def _healthy_master(self) -> RedisPod | None:
        master = self.agreed_master()
        if master is None:
            return None
        replicas = [pod for pod in self.live_pods() if pod is not master]
        for replica in replicas:
            info = replica.replication()
            if info.get("master_host") != master.host or info.get("master_link_status") != "up":
                return None
        sentinels = [pod for pod in self.pods if pod.sentinel.running]
        for pod in sentinels:
            state = pod.sentinel_state()
            if state["is_sdown"] or state["is_odown"]:
                return None
            if state["num-slaves"] < len(replicas):
                return None
            if state["num-other-sentinels"] < len(sentinels) - 1:
                return None
        return master


class RoleWatch:
    """Polls ROLE on every pod in a background thread, about every `interval` seconds.

    `most_masters` is the largest number of pods that said "master" in one round;
    `first_seen[(pod name, role)]` is when (time.monotonic()) that pod first answered that
    role (None: no answer).
    """

    def __init__(self, statefulset: RedisStatefulSet, interval: float = 0.02) -> None:
        self.pods = statefulset.pods
        self.interval = interval
        self.rounds = 0
        self.most_masters = 0
        self.first_seen: dict[tuple[str, str | None], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="role-watch", daemon=True)

    def roles_seen(self, pod: RedisPod) -> set[str | None]:
        return {role for name, role in self.first_seen if name == pod.name}

    def when(self, pod: RedisPod, role: str | None, timeout: float = 5) -> float:
        """When `pod` first answered `role`, waiting (inside the block) for the watch to see it."""
        key = (pod.name, role)
        wait_until(lambda: key in self.first_seen, timeout, f"the watch seeing {pod} as {role}")
        return self.first_seen[key]

    def _watch(self) -> None:
        while not self._stop.is_set():
            roles = [pod.role() for pod in self.pods]
            now = time.monotonic()
            for pod, role in zip(self.pods, roles, strict=True):
                self.first_seen.setdefault((pod.name, role), now)
            self.most_masters = max(self.most_masters, roles.count("master"))
            self.rounds += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RoleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
