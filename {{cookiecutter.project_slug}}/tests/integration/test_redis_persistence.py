"""R32: every Redis node runs with AOF and RDB, and an acknowledged write outlives a crash
of every node at once."""

from __future__ import annotations

import signal
import time

import pytest

from tests.harness.redis import RedisSentinelCluster


def config_value(node_client: object, name: str) -> str:
    raw = node_client.config_get(name)  # type: ignore[attr-defined]
    value = raw.get(name, raw.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.reliability("R32")
def test_every_node_has_aof_and_rdb_on(redis_cluster: RedisSentinelCluster) -> None:
    for node in redis_cluster.nodes:
        client = node.client()
        assert config_value(client, "appendonly") == "yes", node
        assert config_value(client, "appendfsync") == "everysec", node
        assert config_value(client, "save").strip(), f"{node}: RDB snapshots are off"


@pytest.mark.reliability("R32")
def test_a_write_survives_every_node_being_killed(redis_cluster: RedisSentinelCluster) -> None:
    """A transaction too: kombu writes its acknowledgement bookkeeping, and Celery its
    pipelined writes, in MULTI/EXEC. Redis 7 replays an AOF as the `default` user, so with
    that user stripped of every permission each transaction was refused on restart, silently."""
    master = redis_cluster.master_client()
    master.set("r32-probe", "kept")
    with master.pipeline(transaction=True) as transaction:
        transaction.set("r32-transaction", "kept")
        transaction.hset("r32-transaction-hash", "field", "kept")
        transaction.execute()
    time.sleep(1.5)  # appendfsync everysec: at most one second is at risk
    nodes = list(redis_cluster.nodes)
    for node in nodes:
        node.process.kill(signal.SIGKILL)
        node.process.wait_for_exit(10)
    for node in nodes:
        node.process.respawn()
    redis_cluster.wait_healthy(timeout=60)
    with redis_cluster.master_client() as client:
        assert client.get("r32-probe") == b"kept"
        assert client.get("r32-transaction") == b"kept"
        assert client.hget("r32-transaction-hash", "field") == b"kept"
