"""Integration tier: real Redis (Sentinel or standalone), a real ledger database and the
service's own processes, started through deploy/entrypoints/ (see tests/harness/).

Fixtures are module-scoped: a module gets its own Redis, database and stack, so a chaos
test that kills a master cannot disturb another module. Override per module:

    @pytest.fixture(scope="module")
    def stack_options() -> StackOptions:
        return StackOptions(env={"WORKER_LOW_POOL": "prefork", "WORKER_LOW_CONCURRENCY": "2"})

or parametrize `database_kind` / `redis_mode` indirectly with scope="module". The defaults
come from the project's own settings defaults; TEST_DATABASE_KIND and TEST_REDIS_MODE
override them from the environment.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.harness.api import ApiClient
from tests.harness.databases import Database, database_for, kind_of_url
from tests.harness.processes import leaked_processes, stop_all
from tests.harness.redis import RedisDeployment, RedisSentinelCluster, StandaloneRedis
from tests.harness.stack import Stack, StackOptions, package_name

HERE = Path(__file__).resolve().parent
_restart_reports: list[tuple[str, dict[str, int], Path]] = []


def _settings_default(name: str) -> str:
    """A field default of the project's Settings (what the generator's answers baked in)."""
    settings = importlib.import_module(f"{package_name()}.settings")
    default = settings.Settings.model_fields[name].default
    return default.get_secret_value() if isinstance(default, SecretStr) else str(default)


#: The project's answers: its default DATABASE_URL and REDIS_MODE.
DEFAULT_DATABASE_KIND = kind_of_url(_settings_default("database_url"))
DEFAULT_REDIS_MODE = _settings_default("redis_mode")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ carries the `integration` marker."""
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """How often supervision restarted a process (e.g. a worker crashing on a failover)."""
    if not _restart_reports:
        return
    terminalreporter.section("supervised processes: restarts")
    for module, restarts, logs in _restart_reports:
        counts = ", ".join(f"{name}={count}" for name, count in restarts.items())
        terminalreporter.write_line(f"{module}: {counts} (logs: {logs})")


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes() -> Iterator[None]:
    """After the last integration test, nothing the harness started may still run."""
    yield
    leaked = leaked_processes()
    if leaked:
        stop_all()
        described = ", ".join(f"{name} (pid {identity.pid})" for identity, name in leaked.items())
        pytest.fail(f"processes left running after teardown: {described}")


# --- Redis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_mode(request: pytest.FixtureRequest) -> str:
    param: str | None = getattr(request, "param", None)
    return param or os.environ.get("TEST_REDIS_MODE") or DEFAULT_REDIS_MODE


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelCluster]:
    """Master + 1 replica + 3 sentinels; Redis nodes are not restarted automatically."""
    with RedisSentinelCluster(tmp_path_factory.mktemp("redis-sentinel")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneRedis]:
    with StandaloneRedis(tmp_path_factory.mktemp("redis-standalone")) as server:
        yield server


@pytest.fixture(scope="module")
def redis_deployment(request: pytest.FixtureRequest, redis_mode: str) -> RedisDeployment:
    """The Redis the stack uses: `redis_cluster` in sentinel mode (the same object a test
    gets from `redis_cluster`), `redis_standalone` otherwise."""
    if redis_mode == "sentinel":
        cluster: RedisSentinelCluster = request.getfixturevalue("redis_cluster")
        return cluster
    if redis_mode == "standalone":
        server: StandaloneRedis = request.getfixturevalue("redis_standalone")
        return server
    raise ValueError(f"unknown redis_mode {redis_mode!r}")


# --- database -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database_kind(request: pytest.FixtureRequest) -> str:
    param: str | None = getattr(request, "param", None)
    return param or os.environ.get("TEST_DATABASE_KIND") or DEFAULT_DATABASE_KIND


@pytest.fixture(scope="module")
def database(database_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with database_for(database_kind, tmp_path_factory.mktemp(f"db-{database_kind}")) as db:
        yield db


# --- the service ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_options() -> StackOptions:
    """Override in a module to change pools, groups or any setting of the stack."""
    return StackOptions()


@pytest.fixture(scope="module")
def stack(
    request: pytest.FixtureRequest,
    redis_deployment: RedisDeployment,
    database: Database,
    stack_options: StackOptions,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    running = Stack(
        redis=redis_deployment, database=database, workdir=workdir, options=stack_options
    )
    with running:
        yield running
        _restart_reports.append((request.node.nodeid, running.restarts(), running.log_dir))


@pytest.fixture
def api(stack: Stack) -> Iterator[ApiClient]:
    with stack.api_client() as client:
        yield client
