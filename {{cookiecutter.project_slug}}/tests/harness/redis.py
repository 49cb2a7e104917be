"""Private Redis deployments on loopback: a Sentinel cluster, or one standalone server.

Every node is a real `redis-server` in a temporary directory, on free ports, with the
project's ACL users (deploy/redis/users.acl, the `default` user off) on Redis and on the
sentinels, AOF and RDB persistence on, and timings short enough for tests. `env(component)`
gives the project's own variables (settings.py) pointing at it, as that component's user.
With `tls=True` every node and sentinel serves TLS only, and asks clients for a certificate
(tests/harness/tls.py).

    with RedisSentinelCluster(tmp_path) as cluster:
        old = cluster.kill_master()
        new = cluster.wait_for_failover(old, timeout=30)
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import redis as redis_py

from tests.harness.binaries import require_binary
from tests.harness.ports import LOOPBACK, free_ports
from tests.harness.processes import ProcessIdentity, SupervisedProcess, stop_each
from tests.harness.scratch import ScratchDir
from tests.harness.tls import Certificates
from tests.harness.waiting import wait_until

Address = tuple[str, int]
MASTER_NAME = "mymaster"

REDIS_DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "redis"
PERSISTENCE_CONF = REDIS_DEPLOY / "persistence.conf"
MEMORY_CONF = REDIS_DEPLOY / "memory.conf"
#: Far above what any test stores; a runaway test hits noeviction instead of the machine.
MAXMEMORY = "256mb"
USERS_ACL = REDIS_DEPLOY / "users.acl"
#: The harness's own clients (setup, chaos, inspection) are the operators' users.
ADMIN_USER, SENTINEL_ADMIN_USER = "admin", "peer"
#: Sentinel's user on the Redis nodes, the replicas' user, the clients' user on Sentinel.
SENTINEL_USER, REPLICA_USER, SENTINEL_CLIENT_USER = "sentinel", "replica", "client"
#: The test cluster: a master, one replica, three sentinels with short timings; Redis nodes
#: are not restarted automatically (chaos tests kill them and decide when they come back),
#: sentinels are.
REPLICAS, SENTINELS, DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS = 1, 3, 1500, 10_000
#: `default` is off; on a Redis node it may replay the AOF's transactions (users.acl).
DEFAULT_USER = {"redis": "user default off ~* &* +@all", "sentinel": "user default off"}
#: The component a process without its own user (probes, CLI snippets) runs as.
DEFAULT_COMPONENT = "worker"


def acl_rules(where: str) -> dict[str, str]:
    """users.acl's users of `where` ("redis" or "sentinel"): name -> ACL rules."""
    rules: dict[str, str] = {}
    for line in USERS_ACL.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            place, user, text = line.split(maxsplit=2)
            if place == where:
                rules[user] = text
    return rules


class Users:
    """A fresh password for every user of users.acl, and the config lines that create them."""

    def __init__(self) -> None:
        self.passwords = {
            where: {user: secrets.token_urlsafe(16) for user in acl_rules(where)}
            for where in ("redis", "sentinel")
        }

    def config_lines(self, where: str) -> list[str]:
        lines = [DEFAULT_USER[where]]
        for user, rules in acl_rules(where).items():
            password = self.passwords[where][user]
            lines.append(f"user {user} on >{password} resetkeys resetchannels -@all {rules}")
        return lines

    def password(self, user: str, where: str = "redis") -> str:
        return self.passwords[where][user]

    def env(self, component: str, *, sentinel: bool) -> dict[str, str]:
        """The settings of one component: its Redis user (and the Sentinel client user)."""
        env = {"REDIS_USERNAME": component, "REDIS_PASSWORD": self.password(component)}
        if sentinel:
            env["REDIS_SENTINEL_USERNAME"] = SENTINEL_CLIENT_USER
            env["REDIS_SENTINEL_PASSWORD"] = self.password(SENTINEL_CLIENT_USER, "sentinel")
        return env


def format_address(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _listen_lines(port: int, tls: Certificates | None) -> list[str]:
    """Where a node or sentinel listens: `port`, plain or (with `tls`) TLS only."""
    if tls is None:
        return [f"bind {LOOPBACK}", f"port {port}"]
    return [f"bind {LOOPBACK}", "port 0", f"tls-port {port}", *tls.redis_server_lines()]


def _tls_options(tls: Certificates | None) -> dict[str, Any]:
    return {} if tls is None else tls.redis_options()


#: What a node or sentinel that is down, starting or not agreeing yet raises.
_NOT_YET = (redis_py.RedisError, OSError, ValueError)


class RedisDeployment:
    """What the stack needs from any Redis topology: users, TLS, processes, the project's
    settings (`env`), and a start that stops whatever it started when it fails."""

    mode = ""

    def __init__(self, workdir: str | Path | None, tls: bool) -> None:
        self._workdir = ScratchDir(workdir, f"redis-{self.mode}-")
        self.workdir = self._workdir.path
        self.users = Users()
        self.tls = Certificates(self.workdir / "tls") if tls else None

    def _start(self, timeout: float) -> None:
        raise NotImplementedError

    def _addresses(self) -> dict[str, str]:
        raise NotImplementedError

    def processes(self) -> list[SupervisedProcess]:
        raise NotImplementedError

    def data_nodes(self) -> list[RedisNode]:
        """The redis-servers holding the data (no sentinels)."""
        raise NotImplementedError

    def master(self) -> RedisNode:
        """The node serving writes now."""
        raise NotImplementedError

    def master_client(self, **options: Any) -> redis_py.Redis:
        """A client of the current master (RedisNode.client: the admin user by default)."""
        return self.master().client(**options)

    def wait_healthy(self, timeout: float = 30) -> Address:
        """Until the deployment serves writes again; the master's address."""
        raise NotImplementedError

    def start(self, timeout: float = 30) -> Self:
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            stop_each(reversed(self.processes()), repr(self))
        finally:
            self._workdir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def identities(self) -> set[ProcessIdentity]:
        return {identity for p in self.processes() for identity in p.identities()}

    def env(self, component: str = DEFAULT_COMPONENT) -> dict[str, str]:
        return {
            "REDIS_MODE": self.mode,
            **self._addresses(),
            **self.credentials(component),
            **({} if self.tls is None else self.tls.env()),
        }

    def credentials(self, component: str) -> dict[str, str]:
        """The Redis user (and in sentinel mode the Sentinel client user) of one component."""
        return self.users.env(component, sentinel=self.mode == "sentinel")


class _Server:
    """One redis-server of its own (a node or a sentinel): directory, config, process."""

    where = "redis"  # the users.acl section of its users
    config_name = "redis.conf"
    extra_args: tuple[str, ...] = ()
    restart = False  # a node's restarts are the chaos tests' to decide; a sentinel's are not

    def __init__(
        self,
        name: str,
        port: int,
        directory: Path,
        users: Users,
        lines: list[str],
        tls: Certificates | None,
    ) -> None:
        self.name = name
        self.address: Address = (LOOPBACK, port)
        self.users = users
        self.tls = tls
        directory.mkdir(parents=True, exist_ok=True)
        # Writable: a sentinel rewrites its own and a node's (CONFIG REWRITE) on failovers.
        self.config_path = directory / self.config_name
        common = [
            *_listen_lines(port, tls),
            "daemonize no",
            f'dir "{directory}"',
            f'pidfile "{directory / self.config_path.stem}.pid"',
            'logfile ""',
            *users.config_lines(self.where),
        ]
        self.config_path.write_text("\n".join([*common, *lines]) + "\n")
        self.process = SupervisedProcess(
            name,
            [
                require_binary("redis-server", "redis-server"),
                str(self.config_path),
                *self.extra_args,
            ],
            env={"PATH": "/usr/bin:/bin"},
            cwd=directory,
            log_dir=directory.parent / "logs",
            restart=self.restart,
        )

    def __repr__(self) -> str:
        address = format_address(self.address)
        return f"<{type(self).__name__} {self.name} {address} pid={self.process.pid}>"

    def _client(self, user: str, **options: Any) -> redis_py.Redis:
        options.setdefault("socket_timeout", 2)
        options.setdefault("socket_connect_timeout", 1)
        return redis_py.Redis(
            host=self.address[0],
            port=self.address[1],
            username=user,
            password=self.users.password(user, self.where),
            **{**_tls_options(self.tls), **options},
        )


class RedisNode(_Server):
    """One redis-server (master or replica)."""

    def __init__(
        self,
        name: str,
        port: int,
        directory: Path,
        users: Users,
        *,
        replica_of: Address | None = None,
        tls: Certificates | None = None,
    ) -> None:
        lines = [
            f"masteruser {REPLICA_USER}",
            f"masterauth {users.password(REPLICA_USER)}",
            # R32: the project's own persistence settings (AOF + RDB).
            f'include "{PERSISTENCE_CONF}"',
            # The project's memory bound: noeviction, so a full Redis refuses, never drops.
            f'include "{MEMORY_CONF}"',
            f"maxmemory {MAXMEMORY}",
            'dbfilename "dump.rdb"',
            "protected-mode yes",
            # A replica's full sync starts at once, not after the default 5 s wait.
            "repl-diskless-sync-delay 0",
        ]
        if replica_of is not None:
            lines.append(f"replicaof {replica_of[0]} {replica_of[1]}")
        super().__init__(name, port, directory, users, lines, tls)

    def client(self, user: str = ADMIN_USER, **options: Any) -> redis_py.Redis:
        """A client as `user` (the operators' admin by default); replies are bytes (redis-py's
        default: kombu keys are binary) unless `decode_responses=True` is passed."""
        return self._client(user, **options)

    def ping(self) -> bool:
        with self.client() as client:
            return bool(client.ping())

    def role(self) -> str:
        return str(self.info()["role"])

    def info(self, section: str = "replication") -> dict[str, Any]:
        with self.client(decode_responses=True) as client:
            found: dict[str, Any] = client.info(section)
            return found

    def wait_ready(self, timeout: float = 15) -> None:
        wait_until(self.ping, timeout, f"{self.name} answering PING", 0.1, ignore=_NOT_YET)


class SentinelNode(_Server):
    """One `redis-server sentinel.conf --sentinel`."""

    where = "sentinel"
    config_name = "sentinel.conf"
    extra_args = ("--sentinel",)
    restart = True

    def __init__(
        self,
        name: str,
        port: int,
        directory: Path,
        users: Users,
        master: Address,
        quorum: int,
        tls: Certificates | None,
    ) -> None:
        self.master_name = MASTER_NAME
        lines = [
            # Sentinels authenticate to each other as the peer user.
            f"sentinel sentinel-user {SENTINEL_ADMIN_USER}",
            f"sentinel sentinel-pass {users.password(SENTINEL_ADMIN_USER, 'sentinel')}",
            f"sentinel monitor {MASTER_NAME} {master[0]} {master[1]} {quorum}",
            f"sentinel auth-user {MASTER_NAME} {SENTINEL_USER}",
            f"sentinel auth-pass {MASTER_NAME} {users.password(SENTINEL_USER)}",
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {MASTER_NAME} 1",
        ]
        super().__init__(name, port, directory, users, lines, tls)

    def client(self, user: str = SENTINEL_ADMIN_USER) -> redis_py.Redis:
        return self._client(user, decode_responses=True)

    def master_address(self) -> Address:
        """SENTINEL get-master-addr-by-name, as this sentinel sees it now."""
        with self.client() as client:
            reply = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if not reply:
            raise ValueError(f"{self.name} does not know master {self.master_name!r}")
        host, port = reply
        return (str(host), int(port))

    def master_state(self) -> dict[str, str]:
        """SENTINEL MASTER <name> as a plain dict of strings (num-slaves, flags...)."""
        with self.client() as client:
            reply = client.execute_command("SENTINEL", "MASTER", self.master_name)
        if isinstance(reply, dict):
            return {str(key): str(value) for key, value in reply.items()}
        items = [str(item) for item in reply]
        return dict(zip(items[::2], items[1::2], strict=True))


class RedisSentinelCluster(RedisDeployment):
    """A master, REPLICAS replicas and SENTINELS sentinels on free loopback ports."""

    mode = "sentinel"

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, tls)
        self.master_name = MASTER_NAME
        ports = free_ports(1 + REPLICAS + SENTINELS)
        directories = [self.workdir / f"redis-{index}" for index in range(1 + REPLICAS)]
        master = RedisNode("redis-master", ports[0], directories[0], self.users, tls=self.tls)
        self.nodes = [master] + [
            RedisNode(
                f"redis-replica-{index}",
                ports[index],
                directories[index],
                self.users,
                replica_of=master.address,
                tls=self.tls,
            )
            for index in range(1, 1 + REPLICAS)
        ]
        self.sentinels = [
            SentinelNode(
                f"sentinel-{index}",
                port,
                self.workdir / f"sentinel-{index}",
                self.users,
                master.address,
                SENTINELS // 2 + 1,
                self.tls,
            )
            for index, port in enumerate(ports[1 + REPLICAS :])
        ]

    def __repr__(self) -> str:
        return f"<RedisSentinelCluster {self.nodes} {self.sentinels}>"

    # --- lifecycle --------------------------------------------------------------------

    def _start(self, timeout: float) -> None:
        for node in self.nodes:
            node.process.start()
        for node in self.nodes:
            node.wait_ready(timeout)
        for sentinel in self.sentinels:
            sentinel.process.start()
        self.wait_healthy(timeout)

    def processes(self) -> list[SupervisedProcess]:
        return [node.process for node in self.nodes] + [s.process for s in self.sentinels]

    # --- the project's view -----------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        return [sentinel.address for sentinel in self.sentinels]

    def _addresses(self) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(format_address(a) for a in self.sentinel_addresses),
            "REDIS_MASTER_NAME": self.master_name,
        }

    # --- topology ---------------------------------------------------------------------

    def node_at(self, address: Address) -> RedisNode:
        for node in self.nodes:
            if node.address == (address[0], int(address[1])):
                return node
        raise KeyError(f"no Redis node of this cluster at {format_address(address)}")

    def _answering_sentinels(self) -> Iterator[SentinelNode]:
        for sentinel in self.sentinels:
            if sentinel.process.running:
                yield sentinel

    def master_address(self) -> Address:
        """The master as the first answering sentinel reports it."""
        errors: list[str] = []
        for sentinel in self._answering_sentinels():
            try:
                return sentinel.master_address()
            except _NOT_YET as exc:
                errors.append(f"{sentinel.name}: {exc}")
        raise RuntimeError(f"no sentinel answered: {errors}")

    def master(self) -> RedisNode:
        return self.node_at(self.master_address())

    def data_nodes(self) -> list[RedisNode]:
        return list(self.nodes)

    def replicas(self) -> list[RedisNode]:
        master = self.master_address()
        return [node for node in self.nodes if node.address != master]

    def _agreed_master(self) -> Address | None:
        """The master every running sentinel reports, if they agree and it is up as master."""
        seen = {sentinel.master_address() for sentinel in self._answering_sentinels()}
        if len(seen) != 1:
            return None
        (address,) = seen
        node = self.node_at(address)
        return address if node.process.running and node.role() == "master" else None

    def wait_healthy(self, timeout: float = 30) -> Address:
        """Sentinels agree on a live master, every live replica syncs from it and every
        sentinel knows all replicas and all other sentinels (so a failover can happen)."""

        def healthy() -> Address | None:
            address = self._agreed_master()
            if address is None:
                return None
            live_replicas = [
                node for node in self.nodes if node.address != address and node.process.running
            ]
            for node in live_replicas:
                info = node.info()
                if info.get("role") != "slave" or info.get("master_link_status") != "up":
                    return None
                if (str(info.get("master_host")), int(info.get("master_port", 0))) != address:
                    return None
            live_sentinels = list(self._answering_sentinels())
            for sentinel in live_sentinels:
                state = sentinel.master_state()
                if "s_down" in state.get("flags", "") or "o_down" in state.get("flags", ""):
                    return None
                if int(state.get("num-slaves", 0)) < len(live_replicas):
                    return None
                if int(state.get("num-other-sentinels", 0)) < len(live_sentinels) - 1:
                    return None
            return address

        return wait_until(healthy, timeout, "a healthy Sentinel cluster", ignore=_NOT_YET)

    # --- chaos ------------------------------------------------------------------------

    def kill_master(self, signum: int = signal.SIGKILL) -> Address:
        """Kill the current master (SIGKILL by default); returns its address."""
        address = self.master_address()
        self.node_at(address).process.kill(signum)
        return address

    def wait_for_failover(self, old: Address, timeout: float = 30) -> Address:
        """Wait until the sentinels agree on a new master that answers as master."""

        def promoted() -> Address | None:
            address = self._agreed_master()
            return address if address is not None and address != old else None

        what = f"a failover away from {format_address(old)}"
        return wait_until(promoted, timeout, what, 0.1, ignore=_NOT_YET)

    def restart_node(self, address: Address, timeout: float = 15) -> RedisNode:
        """Start a killed node again (sentinels turn an old master into a replica)."""
        node = self.node_at(address)
        node.process.respawn()
        node.wait_ready(timeout)
        return node


class StandaloneRedis(RedisDeployment):
    """One redis-server with the project's ACL users for REDIS_MODE=standalone."""

    mode = "standalone"

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, tls)
        (port,) = free_ports(1)
        self.node = RedisNode("redis", port, self.workdir / "redis", self.users, tls=self.tls)

    @property
    def address(self) -> Address:
        return self.node.address

    def _start(self, timeout: float) -> None:
        self.node.process.start()
        self.node.wait_ready(timeout)

    def processes(self) -> list[SupervisedProcess]:
        return [self.node.process]

    def data_nodes(self) -> list[RedisNode]:
        return [self.node]

    def master(self) -> RedisNode:
        return self.node

    def wait_healthy(self, timeout: float = 30) -> Address:
        self.node.wait_ready(timeout)
        return self.address

    def _addresses(self) -> dict[str, str]:
        return {"REDIS_ADDRESS": format_address(self.address)}

    def kill(self, signum: int = signal.SIGKILL) -> None:
        self.node.process.kill(signum)

    def restart(self, timeout: float = 15) -> None:
        self.node.process.respawn()
        self.node.wait_ready(timeout)


def redis_for(mode: str, workdir: str | Path | None = None, **options: Any) -> RedisDeployment:
    """An unstarted deployment for REDIS_MODE `mode` ("sentinel" or "standalone")."""
    kinds: dict[str, type[RedisSentinelCluster | StandaloneRedis]] = {
        "sentinel": RedisSentinelCluster,
        "standalone": StandaloneRedis,
    }
    if mode not in kinds:
        raise ValueError(f"unknown Redis mode {mode!r}: sentinel or standalone")
    return kinds[mode](workdir, **options)
