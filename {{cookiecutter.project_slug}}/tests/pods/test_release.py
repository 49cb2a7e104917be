"""The chart's default release on a Docker engine: install, Redis failover and drain, a
worker rollout, a beat restart. One release for the module, scenarios in order.

Every bound is generous: the figures are printed and written to results/last-run.json.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.harness.chart import FULLNAME
from tests.harness.waiting import wait_until
from tests.pods.conftest import FAST_SETTINGS, Stack, record
from tests.pods.podrunner import Pod

# The release starts with the module's first test (an image build, then every pod).
pytestmark = [pytest.mark.pods, pytest.mark.timeout(900)]

QUEUE_TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "high": ("demo.urgent_ping", {}),
    "default": ("demo.echo", {"message": "hello"}),
    "low": ("demo.reports.build_report", {"size": 1000, "chunk_size": 250}),
}
FINAL = {"SUCCEEDED", "FAILED", "DEAD", "REVOKED"}
REDIS = f"{FULLNAME}-redis"
DATABASE = f"{FULLNAME}-db"
SENTINEL_CLI = (
    'REDISCLI_AUTH="$SENTINEL_USER_CLIENT_PASSWORD" redis-cli --user client -p 26379'
    ' SENTINEL get-master-addr-by-name "$REDIS_MASTER_NAME"'
)
ROLE_CLI = 'REDISCLI_AUTH="$REDIS_USER_ADMIN_PASSWORD" redis-cli --user admin ROLE'


def holds_within(condition: Callable[[], bool], timeout: float, what: str, step: float = 1) -> bool:
    """Whether `condition` holds within `timeout` seconds (for figures recorded either way)."""
    try:
        wait_until(condition, timeout, what, step=step)
    except TimeoutError:
        return False
    return True


def submit(client: httpx.Client, name: str, kwargs: dict[str, Any], **options: Any) -> str:
    response = client.post("/api/v1/tasks", json={"name": name, "kwargs": kwargs, **options})
    assert response.status_code == 202, f"{name}: {response.status_code} {response.text}"
    return str(response.json()["id"])


def wait_final(client: httpx.Client, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each task's body once final ({"state": "not final"} for one still not after `timeout`)."""
    bodies: dict[str, dict[str, Any]] = {}

    def all_final() -> bool:
        for task_id in [task_id for task_id in ids if task_id not in bodies]:
            try:
                response = client.get(f"/api/v1/tasks/{task_id}")
            except httpx.TransportError:
                continue
            if response.status_code == 200 and response.json()["state"] in FINAL:
                bodies[task_id] = response.json()
        return len(bodies) == len(ids)

    holds_within(all_final, timeout, "every task final")
    return {task_id: bodies.get(task_id, {"state": "not final"}) for task_id in ids}


def one_task_per_queue(stack: Stack, timeout: float = 120) -> dict[str, str]:
    with stack.api() as client:
        ids = {queue: submit(client, name, kwargs) for queue, (name, kwargs) in QUEUE_TASKS.items()}
        bodies = wait_final(client, list(ids.values()), timeout)
    return {queue: bodies[task_id]["state"] for queue, task_id in ids.items()}


def redis_pods(stack: Stack) -> list[Pod]:
    return sorted(stack.cluster.pods(REDIS), key=lambda pod: pod.name)


def master_host(stack: Stack) -> str:
    """The master's host name as the first answering sentinel announces it ("" if none)."""
    for pod in redis_pods(stack):
        if pod.ready or pod.phase == "Running":
            answer = stack.exec(pod, "sentinel", SENTINEL_CLI, timeout=10).split()
            if answer:
                return answer[0]
    return ""


def master_pod(stack: Stack) -> Pod:
    host = master_host(stack)
    for pod in redis_pods(stack):
        if host.split(".")[0] == pod.name:
            return pod
    raise AssertionError(f"no pod for the announced master {host!r}")


def roles(stack: Stack) -> dict[str, str]:
    return {
        pod.name: (stack.exec(pod, "redis", ROLE_CLI, timeout=10).split() or ["?"])[0]
        for pod in redis_pods(stack)
    }


def effect_counts(stack: Stack, ids: list[str]) -> dict[str, int]:
    """Committed executions per task id, read in the ledger database (demo_effects)."""
    query = "SELECT task_id, count(*) FROM demo_effects GROUP BY task_id"
{%- if cookiecutter.database == "postgresql" %}
    script = f'psql -U app -d app -At -F " " -c "{query}"'
{%- else %}
    script = f'mariadb -u app -p"$(cat "$MARIADB_PASSWORD_FILE")" app -N -B -e "{query}"'
{%- endif %}
    output = stack.exec(stack.cluster.pod(f"{DATABASE}-0"), "database", script)
    counts = dict(line.split() for line in output.splitlines() if line.strip())
    return {task_id: int(counts.get(task_id, 0)) for task_id in ids}


# --- 1. install ---------------------------------------------------------------------------
def test_install_runs_migrations_then_every_pod_becomes_ready(stack: Stack) -> None:
    cluster = stack.cluster
    started = min(pod.created_at for w in cluster.workloads.values() for pod in w.pods)
    (migrations,) = cluster.jobs()  # <fullname>-migrate-<revision>
    cluster.wait_complete(migrations.name, timeout=420)
    migrated = time.time()
    cluster.wait_ready(timeout=420)
    ready = {
        name: round(max(p.ready_at or 0 for p in workload.live()) - started, 1)
        for name, workload in cluster.workloads.items()
        if workload.kind != "Job"
    }
    record(
        "install",
        migrations_done_s=round(migrated - started, 1),
        ready_s=ready,
        all_ready_s=max(ready.values()),
        skipped=cluster.skipped,
    )
    # The app pods waited for the schema: none became ready before the Job finished.
    app_pods = [p for w in cluster.workloads.values() if w.kind == "Deployment" for p in w.live()]
    gated = [p for p in app_pods if p.inits]
    assert gated, "no app pod has the wait-for-migrations init container"
    assert all((p.ready_at or 0) >= migrated - 1 for p in gated), [
        (p.name, p.ready_at, migrated) for p in gated
    ]
    assert {"NetworkPolicy", "PodDisruptionBudget"} <= set(cluster.skipped), cluster.skipped


def test_install_one_task_per_queue_succeeds_through_the_api_service(stack: Stack) -> None:
    assert one_task_per_queue(stack) == dict.fromkeys(QUEUE_TASKS, "SUCCEEDED")


def test_install_one_master_two_replicas(stack: Stack) -> None:
    topology = ["master", "slave", "slave"]
    wait_until(lambda: sorted(roles(stack).values()) == topology, 60, "one master, two replicas",
               step=1, detail=lambda: str(roles(stack)))  # fmt: skip
    master = master_pod(stack)
    assert roles(stack)[master.name] == "master"


# --- 2 and 4. the Redis master killed, then drained, under a stream of tasks ------------
class Producer:
    """Submits demo.record_effect through the API Service, round-robin over the queues."""

    def __init__(self, stack: Stack, label: str) -> None:
        self.stack, self.label = stack, label
        self.accepted: list[tuple[str, float]] = []
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"producer-{label}", daemon=True)

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)

    def _run(self) -> None:
        queues = tuple(QUEUE_TASKS)
        number = 0
        with self.stack.api(timeout=60) as client:
            while not self.stop.is_set():
                body = {
                    "name": "demo.record_effect",
                    "kwargs": {"key": f"{self.label}-{number}", "seconds": 0.05},
                    "queue": queues[number % len(queues)],
                }
                sent = time.time()
                try:
                    response = client.post("/api/v1/tasks", json=body)
                except httpx.TransportError as exc:
                    self.refused.append(repr(exc))
                else:
                    if response.status_code == 202:
                        self.accepted.append((str(response.json()["id"]), sent))
                    else:
                        self.refused.append(f"{response.status_code} {response.text[:200]}")
                number += 1
                time.sleep(0.05)

    def outcome(self, since: float) -> dict[str, Any]:
        """Every accepted task's end, its committed effects, and when tasks flowed again."""
        ids = [task_id for task_id, _ in self.accepted]
        with self.stack.api() as client:
            bodies = wait_final(client, ids, timeout=300)
        counts = effect_counts(self.stack, ids)
        finished_after = [
            datetime.fromisoformat(body["finished_at"]).timestamp() - since
            for task_id, sent in self.accepted
            if sent > since and (body := bodies[task_id]).get("finished_at")
        ]
        states = [bodies[task_id]["state"] for task_id in ids]
        return {
            "accepted": len(ids),
            "accepted_after": sum(1 for _, sent in self.accepted if sent > since),
            "refused": len(self.refused),
            "refused_examples": self.refused[:3],
            "succeeded": states.count("SUCCEEDED"),
            "not_succeeded": [
                {"id": task_id, **bodies[task_id]}
                for task_id in ids
                if bodies[task_id]["state"] != "SUCCEEDED"
            ][:5],
            "lost": sum(1 for task_id in ids if counts[task_id] == 0),
            "duplicated": sum(1 for task_id in ids if counts[task_id] > 1),
            "tasks_flow_again_s": round(min(finished_after), 1) if finished_after else None,
        }


def wait_promotion(stack: Stack, old: str, since: float, timeout: float = 90) -> float | None:
    """Seconds from `since` until a sentinel names a master other than pod `old`."""

    def promoted() -> bool:
        host = master_host(stack)
        return bool(host) and host.split(".")[0] != old

    if not holds_within(promoted, timeout, f"a master other than {old}", step=0.5):
        return None
    return round(time.time() - since, 1)


def healthy_topology(stack: Stack) -> bool:
    pods = redis_pods(stack)
    return (
        len(pods) == 3
        and all(pod.ready for pod in pods)
        and sorted(roles(stack).values()) == ["master", "slave", "slave"]
    )


def test_failover_killed_master_pod_loses_and_duplicates_nothing(stack: Stack) -> None:
    cluster = stack.cluster
    wait_until(lambda: healthy_topology(stack), 120, "three Redis pods ready, one master",
               step=1, detail=lambda: str(roles(stack)))  # fmt: skip
    victim = master_pod(stack).name
    node_down_s = 20  # past down-after-milliseconds (5 s): the sentinels must fail over
    with Producer(stack, "failover") as producer:
        time.sleep(5)
        killed_at = time.time()
        killer = threading.Thread(target=cluster.kill_pod, args=(victim, node_down_s))
        killer.start()
        promoted_s = wait_promotion(stack, victim, killed_at)
        killer.join()
        time.sleep(max(0.0, 30 - (time.time() - killed_at)))
    # Tasks flow again: the first task sent after every process of the pod was dead.
    dead_at = next(at for at, who, text in cluster.events if (who, text) == (victim, "killed"))
    figures = producer.outcome(dead_at)
    back = holds_within(lambda: healthy_topology(stack), 180, "back as a replica")
    figures.update(
        killed=victim,
        promotion_s=promoted_s,
        back_as_replica=back,
        roles=roles(stack),
        new_master=master_host(stack),
    )
    record("failover", **figures)
    assert promoted_s is not None, figures
    assert figures["accepted_after"] > 0, figures  # the stream went on through the failover
    assert figures["succeeded"] == figures["accepted"], figures
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert figures["tasks_flow_again_s"] is not None, figures
    # The pod came back under its ordinal name, as a replica: one master, never two.
    assert back, figures
    assert roles(stack)[victim] == "slave", figures
    assert one_task_per_queue(stack) == dict.fromkeys(QUEUE_TASKS, "SUCCEEDED")


def test_drain_master_pod_hands_over_before_it_stops(stack: Stack) -> None:
    cluster = stack.cluster
    wait_until(lambda: healthy_topology(stack), 180, "three Redis pods ready, one master",
               step=1, detail=lambda: str(roles(stack)))  # fmt: skip
    drained = master_pod(stack)
    victim = drained.name
    with Producer(stack, "drain") as producer:
        time.sleep(5)
        deleted_at = time.time()
        deleter = threading.Thread(target=cluster.delete_pod, args=(victim,))
        deleter.start()
        promoted_s = wait_promotion(stack, victim, deleted_at)
        deleter.join(timeout=200)
        time.sleep(max(0.0, 25 - (time.time() - deleted_at)))
    figures = producer.outcome(deleted_at)
    events = [
        (at - deleted_at, text)
        for at, who, text in cluster.events
        if who == victim and at >= deleted_at and text.startswith("redis:")
    ]
    hook_done = next((at for at, text in events if text == "redis: preStop hook done"), None)
    stopped = next((at for at, text in events if text.startswith("redis: stop signal")), None)
    back = holds_within(lambda: healthy_topology(stack), 180, "back as a replica")
    redis_log = next(c for c in drained.containers if c.spec["name"] == "redis").previous_logs
    handed_over = [line for line in redis_log.splitlines() if "handed over to" in line]
    figures.update(
        handed_over=handed_over,
        drained=victim,
        promotion_s=promoted_s,
        prestop_done_s=round(hook_done, 1) if hook_done is not None else None,
        stop_signal_s=round(stopped, 1) if stopped is not None else None,
        back_as_replica=back,
        roles=roles(stack),
    )
    record("drain", **figures)
    assert hook_done is not None, events
    assert stopped is not None, events
    assert promoted_s is not None, figures
    # The hook returned once the sentinels named another master and this node was its
    # replica (its own log line), and only then came the stop signal.
    assert handed_over, figures
    assert hook_done <= stopped, events
    assert figures["refused"] == 0, figures  # no task refused
    assert figures["accepted_after"] > 0, figures
    assert figures["succeeded"] == figures["accepted"], figures
    assert figures["lost"] == 0, figures
    assert figures["duplicated"] == 0, figures
    assert back, figures
    assert roles(stack)[victim] == "slave", figures


# --- 3. a worker Deployment rolled while it runs a 20 s task -----------------------------
def test_rolling_a_worker_deployment_loses_no_running_task(stack: Stack) -> None:
    cluster = stack.cluster
    name = f"{FULLNAME}-worker-default"
    (old,) = cluster.pods(name)
    with stack.api() as client:
        task_id = submit(client, "demo.sleep", {"seconds": 20}, queue="default")

        def state() -> str:
            return str(client.get(f"/api/v1/tasks/{task_id}").json()["state"])

        wait_until(lambda: state() == "STARTED", 60, "the task started", step=1, detail=state)
        rolled_at = time.time()
        (new,) = cluster.rollout_restart(name, timeout=300)
        cluster.wait(lambda: old.phase == "Deleted", 420, f"{old.name} gone")
        body = wait_final(client, [task_id], timeout=120)[task_id]
    terminating = next(
        at for at, who, text in cluster.events if who == old.name and text == "terminating"
    )
    exited = [text for _, who, text in cluster.events if who == old.name and "exited" in text]
    figures = {
        "old": old.name,
        "new": new.name,
        "new_ready_s": round((new.ready_at or 0) - rolled_at, 1),
        "old_terminating_s": round(terminating - rolled_at, 1),
        "old_exit": exited,
        "task_state": body["state"],
        "attempts": body.get("attempts"),
        "worker": body.get("worker"),
    }
    record("rollout", **figures)
    assert new.ready_at is not None, figures
    assert new.ready_at <= terminating, figures  # the new pod ready before the old one stops
    assert body["state"] == "SUCCEEDED", figures
    assert int(body.get("attempts") or 1) <= 2, figures  # finished, or re-run once


# --- 5. beat recreated: the schedule goes on, no run twice --------------------------------
SENT = re.compile(r'"timestamp": "([^"]+)".*Sending due task urgent-ping-tick')


def sends(log: str) -> list[float]:
    """When the beat in `log` sent the urgent-ping-tick entry (epoch seconds)."""
    return [
        datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC).timestamp()
        for stamp in SENT.findall(log)
    ]


def test_recreating_the_beat_pod_keeps_the_schedule_without_doubled_runs(stack: Stack) -> None:
    cluster = stack.cluster
    name = f"{FULLNAME}-beat"
    tick = float(FAST_SETTINGS["BEAT_TICK_SECONDS"])
    (old,) = cluster.pods(name)
    before = time.time()
    time.sleep(4 * tick)
    recreated_at = time.time()
    (new,) = cluster.rollout_restart(name, timeout=300)  # strategy Recreate
    time.sleep(6 * tick)
    (beat,) = old.containers
    old_sends = sends(beat.previous_logs)
    new_sends = sends(cluster.logs(new.containers[0].name, tail=2000))
    times = sorted(t for t in old_sends + new_sends if t >= before)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(times)]
    old_runs = len([t for t in old_sends if t >= before])
    figures: dict[str, Any] = {
        "tick_s": tick,
        "old_runs": old_runs,
        "new_runs": len(new_sends),
        "new_ready_s": round((new.ready_at or 0) - recreated_at, 1),
        "first_run_after_recreate_s": round(new_sends[0] - recreated_at, 1) if new_sends else None,
        "gaps_s": gaps,
    }
    record("beat", **figures)
    assert old_runs >= 2, figures
    assert len(new_sends) >= 2, figures  # the schedule continues under the new pod
    assert min(gaps) >= tick / 2, figures  # no run doubled


# --- after every scenario: no log holds a secret ------------------------------------------
def test_no_container_logs_a_generated_secret(stack: Stack) -> None:
    """The release's generated passwords appear in no container's log, failovers' and
    restarts' tracebacks included{% if cookiecutter.use_celery_exporter == "yes" %} (the celery-exporter's once showed its broker URL){% endif %}."""
    cluster = stack.cluster
    values = {
        value.decode()
        for secret in cluster.of_kind("Secret")
        for value in (cluster.data("Secret", secret["metadata"]["name"]) or {}).values()
        if re.fullmatch(rb"[A-Za-z0-9_-]{16,}", value)
    }
    assert values
    leaks = []
    for workload in cluster.workloads.values():
        for pod in workload.pods:
            for container in [*pod.inits, *pod.containers]:
                log = container.previous_logs
                if pod.phase != "Deleted":
                    log += cluster.logs(container.name, tail=100_000)
                leaks += [container.name for value in values if value in log]
    assert not leaks, sorted(set(leaks))
