"""Least privilege on real Redis and Sentinel: each component's user (deploy/redis/users.acl)
can do its own job and nothing server-wide, and no worker report shows a password."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_py
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from {{ cookiecutter.package_name }}.queues import DEAD_QUEUE
from tests.harness.probes import run_python
from tests.harness.redis import (
    SENTINEL_CLIENT_USER,
    RedisDeployment,
    RedisSentinelCluster,
    acl_rules,
)
from tests.harness.stack import Stack

# What Redis answers an unauthenticated client when the default user is off.
DENIED = (NoPermissionError, AuthenticationError, ResponseError)


def run(client: Any, *command: str) -> Any:
    """One raw command (redis-py leaves execute_command untyped)."""
    return client.execute_command(*command)


@pytest.fixture
def worker(redis_deployment: RedisDeployment) -> Iterator[redis_py.Redis]:
    with redis_deployment.master().client("worker") as client:
        yield client


@pytest.fixture
def api_user(redis_deployment: RedisDeployment) -> Iterator[redis_py.Redis]:
    with redis_deployment.master().client("api") as client:
        yield client


def test_the_default_user_is_off(redis_deployment: RedisDeployment) -> None:
    node = redis_deployment.master()
    anonymous = redis_py.Redis(host=node.address[0], port=node.address[1], socket_timeout=2)
    with anonymous, pytest.raises(DENIED):
        anonymous.ping()


# DEBUG is off for every user anyway (enable-debug-command no, Redis' default).
@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("ACL", "LIST"),
        ("SHUTDOWN",),
        ("SCRIPT", "FLUSH"),
        ("MONITOR",),
    ],
)
def test_a_worker_cannot_run_server_wide_commands(
    worker: redis_py.Redis, command: tuple[str, ...]
) -> None:
    with pytest.raises(NoPermissionError):
        run(worker, *command)


def test_a_worker_works_its_queues_but_reads_no_one_elses_keys(
    worker: redis_py.Redis, redis_deployment: RedisDeployment
) -> None:
    # Its own job first, so a denial below is the ACL's and not a broken client. On the
    # dead-letter queue, which no worker of the stack consumes.
    worker.lpush(DEAD_QUEUE, "probe")
    assert worker.brpop([DEAD_QUEUE], timeout=1) == (DEAD_QUEUE.encode(), b"probe")
    with redis_deployment.master().client() as admin:
        admin.set("LIMITS:probe", "1")
        admin.set("unrelated-key", "1")
    for key in ("LIMITS:probe", "unrelated-key"):
        with pytest.raises(NoPermissionError):
            worker.get(key)


def test_the_api_publishes_but_cannot_consume(
    api_user: redis_py.Redis, redis_deployment: RedisDeployment
) -> None:
    api_user.lpush(DEAD_QUEUE, "probe")
    try:
        assert api_user.llen(DEAD_QUEUE) >= 1
        for command in (("BRPOP", DEAD_QUEUE, "1"), ("RPOP", DEAD_QUEUE), ("HGETALL", "unacked")):
            with pytest.raises(NoPermissionError):
                run(api_user, *command)
    finally:
        with redis_deployment.master().client() as admin:
            admin.lrem(DEAD_QUEUE, 0, "probe")


def test_sentinel_clients_can_find_the_master_and_nothing_more(
    redis_deployment: RedisDeployment,
) -> None:
    if not isinstance(redis_deployment, RedisSentinelCluster):
        pytest.skip("standalone Redis: no Sentinel")
    sentinel = redis_deployment.sentinels[0]
    with sentinel.client(SENTINEL_CLIENT_USER) as client:
        host, port = client.execute_command(
            "SENTINEL", "GET-MASTER-ADDR-BY-NAME", redis_deployment.master_name
        )
        assert (host, int(port)) == redis_deployment.master_address()
        name = redis_deployment.master_name
        for command in (
            ("SENTINEL", "FAILOVER", name),
            ("SENTINEL", "SET", name, "quorum", "1"),
            ("SENTINEL", "REMOVE", name),
            ("SENTINEL", "RESET", "*"),
            ("SENTINEL", "CONFIG", "GET", "*"),
            ("ACL", "LIST"),
        ):
            with pytest.raises(NoPermissionError):
                run(client, *command)


def test_no_password_in_what_a_worker_reports(stack: Stack) -> None:
    """`celery inspect stats` (what a dashboard of the workers shows) from real workers."""
    report = run_python(
        stack,
        "import json\n"
        f"from {stack.package}.celery_app import app\n"
        "print(json.dumps(app.control.inspect(timeout=10).stats(), default=repr))\n",
    )
    stats = json.loads(report.strip().splitlines()[-1])
    assert stats, "no worker answered"
    for node, answer in stats.items():
        assert answer["broker"]["transport_options"], node  # the options are reported...
    secrets = {
        value
        for component in acl_rules("redis")
        for name, value in stack.redis.credentials(component).items()
        if name.endswith("PASSWORD")
    }
    for secret in secrets:  # ...but no password of any component
        assert secret not in report
