"""TLS on every hop (R50): the whole stack against Redis, Sentinel and a database that take
nothing but verified TLS, with certificates made for the run (tests/harness/tls.py).

Every Redis node and sentinel listens on TLS only and asks clients for a certificate of
the run's CA; the database refuses TCP clients without TLS. The project gets REDIS_TLS
and the CAs (settings.py), nothing else changes, and the usual guarantees hold: one task
per queue succeeds and, with Sentinel, one master failover under a stream of submissions
loses and repeats nothing (its figures are printed and written to tls-failover.json in
the run's base temporary directory).
"""

from __future__ import annotations
{% if cookiecutter.redis_mode == "sentinel" %}
import json
{%- endif %}
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
{%- if cookiecutter.database != "sqlite" %}
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
{%- endif %}

from tests.harness.api import ApiClient
from tests.harness.databases import Database, database_for
{%- if cookiecutter.redis_mode == "sentinel" %}
from tests.harness.failover import FAILOVER_SETTINGS, run_failovers
{%- endif %}
from tests.harness.probes import redis_client
from tests.harness.redis import RedisSentinelCluster, StandaloneRedis
from tests.harness.stack import Stack, StackOptions
from tests.harness.tls import Certificates

TASK_TIMEOUT = 30


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelCluster]:
    with RedisSentinelCluster(tmp_path_factory.mktemp("redis-tls"), tls=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneRedis]:
    with StandaloneRedis(tmp_path_factory.mktemp("redis-tls"), tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def database(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    # An SQLite ledger is a local file: no connection to protect.
    options = {} if database_kind == "sqlite" else {"tls": True}
    workdir = tmp_path_factory.mktemp(f"db-tls-{database_kind}")
    with database_for(database_kind, workdir, **options) as db:
        yield db


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
{%- if cookiecutter.redis_mode == "sentinel" %}
    return StackOptions(env=dict(FAILOVER_SETTINGS))
{%- else %}
    return StackOptions()
{%- endif %}


def refused(client: redis_py.Redis) -> str | None:
    """Why `client` could not talk to the server (None: it could)."""
    try:
        with client:
            client.ping()
    except (redis_py.ConnectionError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.mark.reliability("R50")
def test_redis_takes_only_verified_tls_clients(stack: Stack, tmp_path: Path) -> None:
    deployment = stack.redis
    assert deployment.tls is not None, "the module's Redis must run with TLS"
    with redis_client(stack) as client:
        assert client.ping(), "a client with the run's CA and a client certificate is refused"
        connection = client.connection_pool.get_connection()
        try:
            assert isinstance(connection, redis_py.SSLConnection)
        finally:
            client.connection_pool.release(connection)
    plain = redis_client(stack, ssl=False)
    assert refused(plain), "Redis answered a client without TLS"
    stranger = Certificates(tmp_path / "other-ca")
    unverified = redis_client(stack, ssl_ca_certs=str(stranger.ca))
    assert "certificate verify failed" in (refused(unverified) or ""), (
        "a server certificate the client's CA did not sign was accepted"
    )
    anonymous = redis_client(stack, ssl_certfile=None, ssl_keyfile=None)
    assert refused(anonymous), "Redis took a TLS client without a client certificate"


{%- if cookiecutter.database != "sqlite" %}


@pytest.mark.reliability("R50")
def test_the_database_takes_only_tls_and_the_ledger_uses_it(
    stack: Stack, api: ApiClient, database: Database
) -> None:
    assert database.env().get("DATABASE_TLS_CA_FILE"), "the module's database must run with TLS"
    # The project's processes have written their ledger rows by now (migrations, beat).
    api.submit_ok("demo.echo", {"message": "over tls"})
{%- if cookiecutter.database == "postgresql" %}
    plain = {"sslmode": "disable"}
    (row,) = database.query(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_ssl s"
        " JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'app'"
    )
    encrypted, connections = int(row[0]), int(row[1])
    assert connections > 0, "no connection of the project's processes to the ledger"
    assert encrypted == connections, f"{connections - encrypted} ledger connections without TLS"
{%- else %}
    plain = {"ssl_disabled": True}
    ((_, accepted),) = database.query("SHOW GLOBAL STATUS LIKE 'Ssl_accepts'")
    assert int(accepted) > 0, "no TLS connection reached the database"
{%- endif %}
    engine = create_engine(database.url, connect_args=plain)
    try:
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
{%- endif %}


@pytest.mark.reliability("R50")
@pytest.mark.parametrize(
    ("name", "kwargs", "queue"),
    [
        ("demo.echo", {"message": "over tls"}, "default"),
        ("demo.urgent_ping", {}, "high"),
        ("demo.reports.build_report", {"size": 100, "chunk_size": 50}, "low"),
    ],
)
def test_a_task_of_every_queue_succeeds_over_tls(
    api: ApiClient, name: str, kwargs: dict[str, Any], queue: str
) -> None:
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    response = api.submit(name, kwargs)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == queue
    api.wait_for_state(response.json()["id"], "SUCCESS", timeout=TASK_TIMEOUT)
{%- if cookiecutter.redis_mode == "sentinel" %}


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    found: dict[str, Any] = {}
    yield found
    if found:
        path = tmp_path_factory.getbasetemp() / "tls-failover.json"
        path.write_text(json.dumps(found, indent=2, sort_keys=True, default=str) + "\n")


@pytest.mark.reliability("R50", "R17", "R31")
def test_a_master_failover_over_tls_loses_and_repeats_nothing(
    stack: Stack, database: Database, figures: dict[str, Any]
) -> None:
    cluster = stack.redis
    assert isinstance(cluster, RedisSentinelCluster)

    def record(scenario: str, **numbers: Any) -> None:
        figures[scenario] = numbers
        print(f"[tls] {scenario}: {json.dumps(numbers, sort_keys=True, default=str)}")

    run_failovers(stack, cluster, database, 1, record, "failover over tls")
{%- endif %}
