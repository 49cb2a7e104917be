"""The Helm chart's Redis scripts (deploy/helm/.../files/redis/) as real processes.

Three pods of redis + sentinel started through redis.sh and sentinel.sh (see
tests/integration/redis_pods.py), then: a fresh start, a SIGKILLed master pod coming back,
the preStop handover (prestop.sh), the probes (probe.sh), the sentinels' fixed ids, the
ACL users of deploy/redis/users.acl (the `default` user off) and TLS-only serving.

Measured seconds (failover after a SIGKILL, promotion on preStop) are printed (`-s` shows
them) and written to chart-redis-timings.json in the run's base temporary directory
(`--basetemp=DIR` chooses it).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_py

from tests.harness.probes import wait_until
from tests.harness.tls import Certificates
from tests.integration.redis_pods import (
    FULLNAME,
    RedisPod,
    RedisStatefulSet,
    RoleWatch,
    expected_myid,
)

Timings = dict[str, dict[str, float]]
HEX40 = re.compile(r"[0-9a-f]{40}")


@pytest.fixture(scope="module")
def timings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Timings]:
    found: Timings = {}
    yield found
    if found:
        path = tmp_path_factory.getbasetemp() / "chart-redis-timings.json"
        path.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
        print(f"\nchart Redis timings written to {path}")


def record(timings: Timings, scenario: str, **seconds: float) -> None:
    timings[scenario] = {name: round(value, 2) for name, value in seconds.items()}
    print(f"[chart redis] {scenario}: {json.dumps(timings[scenario], sort_keys=True)}")


@pytest.fixture
def statefulset(tmp_path: Path) -> Iterator[RedisStatefulSet]:
    with RedisStatefulSet(tmp_path) as running:
        yield running


def new_master(statefulset: RedisStatefulSet, old: RedisPod) -> RedisPod | None:
    master = statefulset.agreed_master()
    return master if master is not None and master is not old else None


def test_a_fresh_start_makes_ordinal_0_the_master(statefulset: RedisStatefulSet) -> None:
    pods = statefulset.pods
    assert statefulset.wait_healthy() is pods[0]
    assert [pod.role() for pod in pods] == ["master", "slave", "slave"]
    assert [pod.sentinel_master() for pod in pods] == [pods[0].host] * 3
    pods[0].redis.wait_for_log("starts as the MASTER", timeout=1)
    for replica in pods[1:]:
        assert replica.replication()["master_host"] == pods[0].host
        replica.redis.wait_for_log(f"starts as a REPLICA of {pods[0].host}", timeout=1)
    for pod in pods:
        # A broker never evicts; persistence.conf is included; the chart's write guard.
        assert pod.config("maxmemory-policy") == "noeviction", pod
        assert pod.config("appendonly") == "yes", pod
        assert pod.config("min-replicas-to-write") == "1", pod
        for container in ("redis", "sentinel"):
            probe = pod.run("probe.sh", container)
            assert probe.returncode == 0, f"{pod} {container}: {probe.stderr}"

    stopped = pods[2]
    stopped.kill()
    for container in ("redis", "sentinel"):
        probe = stopped.run("probe.sh", container)
        assert probe.returncode == 1, f"{stopped} {container} passed while stopped"
        assert f"{container} is unhealthy" in probe.stderr


def test_a_killed_master_pod_comes_back_as_a_replica_of_the_new_master(
    statefulset: RedisStatefulSet, timings: Timings
) -> None:
    old = statefulset.wait_healthy()
    myid = old.sentinel_myid()
    assert myid == expected_myid(FULLNAME, old.ordinal)

    with RoleWatch(statefulset) as failover:
        killed_at = time.monotonic()
        old.kill()
        new = wait_until(lambda: new_master(statefulset, old), 30, "a failover away from it")
        promoted_after = failover.when(new, "master") - killed_at

    with RoleWatch(statefulset) as restart:
        restart.when(old, None)
        restarted_at = time.monotonic()
        old.restart()
        assert statefulset.wait_healthy(timeout=30) is new
        healthy_after = time.monotonic() - restarted_at

    assert restart.most_masters == 1, f"two masters at once: {restart.first_seen}"
    # The watch saw the old master down, then back as a replica, and never as a master.
    assert restart.roles_seen(old) == {None, "slave"}, restart.first_seen
    assert old.replication()["master_host"] == new.host
    old.redis.wait_for_log(f"starts as a REPLICA of {new.host}: the sentinel of", timeout=1)
    assert old.sentinel_myid() == myid
    for pod in statefulset.pods:
        # Still one sentinel to the others after its restart, not a second one.
        assert pod.sentinel_state()["num-other-sentinels"] == 2, pod
    record(
        timings,
        "sigkill_master_pod",
        failover_seconds=promoted_after,
        restarted_pod_healthy_seconds=healthy_after,
    )


def test_a_sentinel_naming_the_restarted_node_loses_to_a_node_that_is_master(
    statefulset: RedisStatefulSet,
) -> None:
    """The master's redis container restarts while a replica has just been promoted (a
    failover under way): its own sentinel still names it, but it must not come back as a
    second master."""
    old = statefulset.wait_healthy()
    promoted = statefulset.pods[1]
    old.redis.kill()
    old.redis.wait_for_exit(10)
    with promoted.redis_client() as client:
        client.execute_command("REPLICAOF", "NO", "ONE")
    assert old.sentinel_master() == old.host

    with RoleWatch(statefulset) as watch:
        watch.when(old, None)
        old.redis.respawn()
        old.redis.wait_for_log(
            f"starts as a REPLICA of {promoted.host}: the sentinel of {old.host} names"
            f" this node, but {promoted.host} says it is master",
            timeout=10,
        )
        watch.when(old, "slave", timeout=10)
    assert "master" not in watch.roles_seen(old), watch.first_seen
    assert old.replication()["master_host"] == promoted.host


def test_prestop_on_the_master_hands_over_before_it_returns(
    statefulset: RedisStatefulSet, timings: Timings
) -> None:
    old = statefulset.wait_healthy()
    with RoleWatch(statefulset) as watch:
        started = time.monotonic()
        hook = old.run("prestop.sh", timeout=40)
        returned_after = time.monotonic() - started
        roles = {pod: pod.role() for pod in statefulset.pods}

        assert hook.returncode == 0, hook.stderr
        masters = [pod for pod, role in roles.items() if role == "master"]
        assert len(masters) == 1, roles
        (new,) = masters
        assert new is not old, f"still the master when the hook returned: {hook.stderr}"
        assert roles[old] == "slave", roles
        promoted = watch.when(new, "master")
        demoted = watch.when(old, "slave")
    assert f"handed over to {new.host}" in hook.stderr
    assert statefulset.wait_healthy() is new
    record(
        timings,
        "prestop_on_master",
        promotion_seconds=promoted - started,
        hook_seconds=returned_after,
        two_masters_seconds=demoted - promoted,
    )


def test_prestop_on_a_replica_returns_at_once_without_a_failover(
    statefulset: RedisStatefulSet,
) -> None:
    master = statefulset.wait_healthy()
    replica = statefulset.pods[1]
    epoch = master.sentinel_state()["config-epoch"]

    started = time.monotonic()
    hook = replica.run("prestop.sh", timeout=40)
    elapsed = time.monotonic() - started

    assert hook.returncode == 0, hook.stderr
    assert elapsed < 3, f"a replica's preStop took {elapsed:.1f} s"
    assert "not the master: nothing to hand over" in hook.stderr
    assert statefulset.agreed_master() is master
    for pod in statefulset.pods:
        state = pod.sentinel_state()
        assert "failover_in_progress" not in state["flags"], pod
        assert state["config-epoch"] == epoch, pod


def started_sentinel_myid(pod: RedisPod) -> str:
    """Start the pod's sentinel alone (through sentinel.sh), read its id, kill it."""
    if pod.sentinel.pid is None:
        pod.sentinel.start()
    else:
        pod.sentinel.respawn()
    myid = wait_until(pod.sentinel_myid, 10, f"{pod}'s sentinel answering")
    pod.kill()
    return myid


def test_the_sentinel_myid_is_fixed_by_seed_and_ordinal(tmp_path: Path) -> None:
    first = RedisStatefulSet(tmp_path / "first")
    # The same release again, with fresh directories: nothing kept from the first.
    again = RedisStatefulSet(tmp_path / "again")
    other_release = RedisStatefulSet(tmp_path / "other", fullname="other-app")
    try:
        ordinal_0 = started_sentinel_myid(first.pods[0])
        restarted = started_sentinel_myid(first.pods[0])
        ordinal_0_again = started_sentinel_myid(again.pods[0])
        ordinal_1 = started_sentinel_myid(first.pods[1])
        other_seed = started_sentinel_myid(other_release.pods[0])
    finally:
        for statefulset in (first, again, other_release):
            statefulset.stop()

    assert HEX40.fullmatch(ordinal_0), ordinal_0
    assert ordinal_0 == expected_myid(FULLNAME, 0)
    assert restarted == ordinal_0_again == ordinal_0
    assert ordinal_1 == expected_myid(FULLNAME, 1) != ordinal_0
    assert other_seed == expected_myid("other-app", 0) != ordinal_0


def test_every_node_and_sentinel_has_the_users_of_users_acl_and_default_off(
    statefulset: RedisStatefulSet,
) -> None:
    master = statefulset.wait_healthy()
    users = statefulset.users
    for pod in statefulset.pods:
        for where, client in (("redis", pod.redis_client()), ("sentinel", pod.sentinel_client())):
            with client:
                assert set(client.acl_users()) == {"default", *users.passwords[where]}, pod
                default = client.acl_getuser("default")
                assert isinstance(default, dict), (pod, where)
                flags = default["flags"]
                assert isinstance(flags, list), (pod, where)
                assert "off" in flags, (pod, where)
                if where == "redis":
                    # Off, yet allowed what the AOF replay runs as `default` (users.acl).
                    replay = client.acl_dryrun("default", "HSET", "key", "field", "1")
                    assert replay in (b"OK", "OK", True), (pod, replay)
        for port in (statefulset.redis_port, statefulset.sentinel_port):
            # No password, or the default user: refused everywhere.
            anonymous = redis_py.Redis(host=pod.host, port=port, socket_timeout=1)
            with anonymous, pytest.raises(redis_py.AuthenticationError):
                anonymous.ping()
    # Replicas and sentinels work through their own users: replication is up, failover too.
    assert all(pod.replication()["master_link_status"] == "up" for pod in statefulset.pods[1:])
    with master.redis_client("worker") as worker:
        worker.rpush("default", "task")
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            worker.flushall()
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            worker.set("not-a-queue", "x")
        assert worker.llen("default") == 1
    with master.sentinel_client("client") as client:
        assert client.sentinel_get_master_addr_by_name("mymaster")[0] == master.host
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            client.execute_command("SENTINEL", "FAILOVER", "mymaster")


def test_with_tls_every_node_and_sentinel_serves_tls_only(tmp_path: Path) -> None:
    with RedisStatefulSet(tmp_path / "pods", tls=Certificates(tmp_path / "tls")) as statefulset:
        master = statefulset.wait_healthy()
        assert master is statefulset.pods[0]
        for pod in statefulset.pods:
            assert pod.config("port") == "0", pod
            assert pod.config("tls-port") == str(statefulset.redis_port), pod
            assert pod.config("tls-replication") == "yes", pod
            for container in ("redis", "sentinel"):
                probe = pod.run("probe.sh", container)
                assert probe.returncode == 0, f"{pod} {container}: {probe.stderr}"
            for port in (statefulset.redis_port, statefulset.sentinel_port):
                # The same user and password in clear text: no answer on a TLS port.
                plain = redis_py.Redis(
                    host=pod.host,
                    port=port,
                    username="admin",
                    password=statefulset.users.password("admin"),
                    socket_timeout=1,
                )
                with plain, pytest.raises(redis_py.ConnectionError):
                    plain.ping()
        hook = master.run("prestop.sh", timeout=40)
        assert hook.returncode == 0, hook.stderr
        assert "handed over to" in hook.stderr, hook.stderr
