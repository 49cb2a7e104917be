"""Who may call the API and how much it takes in: keys, bearer tokens, scopes, ownership,
rate limits, backlog bounds, and the settings that guard them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from pydantic import ValidationError
{%- if cookiecutter.database != "sqlite" %}
from sqlalchemy.engine import make_url
{%- endif %}

from {{ cookiecutter.package_name }}.api.app import create_app
from {{ cookiecutter.package_name }}.api.catalog import SubmissionRejected, TaskCatalog
from {{ cookiecutter.package_name }}.api.keys import RELOAD_SECONDS
from {{ cookiecutter.package_name }}.api.keys import main as keys_cli
from {{ cookiecutter.package_name }}.celery_app import app as celery_app
from {{ cookiecutter.package_name }}.ledger.db import session_scope
from {{ cookiecutter.package_name }}.ledger.models import TaskRecord
from {{ cookiecutter.package_name }}.settings import Settings, get_settings
from tests.unit.conftest import create_key, keys_command

pytestmark = pytest.mark.reliability("R48")

TASKS = "/api/v1/tasks"
ECHO = {"name": "demo.echo", "kwargs": {"message": "hi"}}


def api(**settings: Any) -> TestClient:
    return TestClient(create_app(Settings(**settings) if settings else get_settings()))


def submit(client: TestClient, key: str, body: dict[str, Any] = ECHO) -> Any:
    return client.post(TASKS, json=body, headers={"X-API-Key": key})


# ---- credentials and scopes --------------------------------------------------------------


def test_a_missing_or_unknown_key_is_401_with_a_reason() -> None:
    with api() as client:
        missing = client.post(TASKS, json=ECHO)
        unknown = submit(client, "tsk_not-a-key")
    assert missing.status_code == 401
    assert "X-API-Key" in missing.json()["detail"]
    assert "ApiKey" in missing.headers["WWW-Authenticate"]
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "unknown API key"


def test_a_key_without_the_scope_is_403_naming_it() -> None:
    reader = create_key("reader-only", "tasks:read")
    with api() as client:
        response = submit(client, reader)
        dead = client.get("/api/v1/dead-letters", headers={"X-API-Key": reader})
    assert response.status_code == 403
    assert "tasks:submit" in response.json()["detail"]
    assert "reader-only" in response.json()["detail"]
    assert dead.status_code == 403


def test_health_and_metrics_need_no_key() -> None:
    with api() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_refusals_are_counted_by_reason() -> None:
    with api() as client:
        client.post(TASKS, json=ECHO)
        metrics = client.get("/metrics").text
    assert 'api_auth_failures_total{reason="missing"}' in metrics


def test_a_caller_sees_and_cancels_only_its_own_tasks() -> None:
    alice = create_key("alice", "tasks:submit", "tasks:read", "tasks:cancel")
    mallory = create_key("mallory", "tasks:submit", "tasks:read", "tasks:cancel")
    admin = create_key("ops", "tasks:read", "tasks:admin")
    with api() as client:
        task_id = submit(client, alice).json()["id"]
        as_mallory = {"X-API-Key": mallory}
        assert client.get(f"{TASKS}/{task_id}", headers=as_mallory).status_code == 404
        assert client.delete(f"{TASKS}/{task_id}", headers=as_mallory).status_code == 404
        mine = client.get(f"{TASKS}/{task_id}", headers={"X-API-Key": alice})
        theirs = client.get(f"{TASKS}/{task_id}", headers={"X-API-Key": admin})
    assert mine.status_code == 200
    assert mine.json()["submitted_by"] == "alice"
    assert theirs.status_code == 200
    with session_scope() as session:
        record = session.get(TaskRecord, task_id)
        assert record is not None
        assert record.submitted_by == "alice"
        assert record.state != "REVOKED"


def test_the_key_file_is_followed_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first = _cli(path, "create", "first", "--scope", "tasks:submit")
    with api(api_keys_file=str(path)) as client:
        assert submit(client, first).status_code == 202
        second = _cli(path, "create", "second", "--scope", "tasks:submit")
        _cli(path, "revoke", "first")
        time.sleep(RELOAD_SECONDS + 0.2)
        assert submit(client, second).status_code == 202
        assert submit(client, first).status_code == 401
        # A broken file is not taken: the keys in force stay.
        path.write_text("{not json")
        time.sleep(RELOAD_SECONDS + 0.2)
        assert submit(client, second).status_code == 202


def test_the_key_file_holds_hashes_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    key = _cli(path, "create", "ci", "--scope", "tasks:read")
    text = path.read_text()
    assert key not in text
    assert json.loads(text)["keys"][0]["name"] == "ci"
    assert path.stat().st_mode & 0o077 == 0
    assert _cli(path, "list") == "ci tasks:read"
    assert _cli(path, "create", "ci", "--scope", "tasks:read", code=1) == ""


def test_the_cli_refuses_an_unknown_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        keys_cli(["--file", str(tmp_path / "k.json"), "create", "x", "--scope", "tasks:all"])
    assert "tasks:all" in capsys.readouterr().err


def test_swagger_shows_the_security_schemes() -> None:
    with api() as client:
        schema = client.get("/openapi.json").json()
    assert {"APIKeyHeader", "HTTPBearer"} <= set(schema["components"]["securitySchemes"])
    submit_operation = schema["paths"][TASKS]["post"]
    schemes = {name for requirement in submit_operation["security"] for name in requirement}
    assert schemes == {"APIKeyHeader", "HTTPBearer"}
    assert {"401", "403", "429"} <= set(submit_operation["responses"])


def _cli(path: Path, *arguments: str, code: int = 0) -> str:
    return keys_command("--file", str(path), *arguments, code=code)


# ---- OIDC bearer tokens ------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[tuple[str, Any]]:
    """A signing key and a local JWKS endpoint serving its public half."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "test-key", "use": "sig"}]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", private
    finally:
        server.shutdown()


def _token(private: Any, **claims: Any) -> str:
    payload = {
        "iss": "https://issuer.test",
        "aud": "task-api",
        "sub": "user-1",
        "exp": int(time.time()) + 300,
        "scope": "tasks:submit tasks:read",
        **claims,
    }
    return jwt.encode(payload, private, algorithm="RS256", headers={"kid": "test-key"})


def test_bearer_tokens_are_checked_against_the_issuer(issuer: tuple[str, Any]) -> None:
    jwks_url, private = issuer
    oidc = {
        "api_oidc_issuer": "https://issuer.test",
        "api_oidc_audience": "task-api",
        "api_oidc_jwks_url": jwks_url,
    }

    def call(client: TestClient, token: str) -> Any:
        return client.post(TASKS, json=ECHO, headers={"Authorization": f"Bearer {token}"})

    with api(**oidc) as client:
        good = call(client, _token(private))
        assert good.status_code == 202, good.text
        status = client.get(
            f"{TASKS}/{good.json()['id']}", headers={"Authorization": f"Bearer {_token(private)}"}
        )
        assert status.json()["submitted_by"] == "oidc:user-1"
        assert call(client, _token(private, aud="other")).status_code == 401
        assert call(client, _token(private, exp=int(time.time()) - 60)).status_code == 401
        assert call(client, _token(private, iss="https://evil.test")).status_code == 401
        assert call(client, _token(private, scope="tasks:read")).status_code == 403
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        assert call(client, _token(stranger)).status_code == 401


# ---- admission control -------------------------------------------------------------------


def test_over_the_rate_limit_is_429_with_retry_after() -> None:
    key = create_key("bursty", "tasks:submit")
    with api(api_rate_limit="3/minute") as client:
        answers = [submit(client, key) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [202, 202, 202, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    assert "rate limit" in answers[-1].json()["detail"]


def test_a_full_queue_refuses_new_submissions_and_keeps_what_it_accepted() -> None:
    key = create_key("filler", "tasks:submit")
    body = {"name": "demo.echo", "kwargs": {"message": "fill"}, "queue": "low"}
    with celery_app.connection_for_write() as connection:
        channel: Any = connection.default_channel  # the in-memory transport's channel
        channel.queue_purge("low")
        with api(api_max_backlog_low=3) as client:
            answers = [submit(client, key, body) for _ in range(5)]
        waiting = channel._size("low")
        channel.queue_purge("low")
    assert [answer.status_code for answer in answers] == [202, 202, 202, 503, 503]
    assert answers[-1].headers["Retry-After"]
    assert "API_MAX_BACKLOG_LOW=3" in answers[-1].json()["detail"]
    assert waiting == 3


def test_a_task_moves_only_to_the_queues_it_allows() -> None:
    catalog = TaskCatalog(celery_app, ("ledger.reconcile", "demo.echo"))
    assert catalog.queue("ledger.reconcile", None) == "high"
    with pytest.raises(SubmissionRejected, match="may not be moved"):
        catalog.queue("ledger.reconcile", "low")
    assert catalog.queue("demo.echo", "high") == "high"


# ---- settings that guard access ----------------------------------------------------------


def test_open_access_is_allowed_in_development_only() -> None:
    with pytest.raises(ValidationError, match="ENVIRONMENT=development"):
        Settings(api_auth="none", environment="test")
    with api(api_auth="none", environment="development") as client:
        assert client.post(TASKS, json=ECHO).status_code == 202


def test_production_refuses_placeholder_and_empty_secrets() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(
            environment="production",
            database_url="postgresql+psycopg://app:change-me-database-password@db/app",
            redis_password="",
        )
    message = str(refused.value)
    assert "DATABASE_URL" in message
    assert "REDIS_PASSWORD" in message


def test_production_requires_only_the_secrets_of_its_process_kind() -> None:
    """A chart pod holds only its own secret files (PROCESS_KIND names the pod's kind)."""
    strong: dict[str, Any] = {"redis_password": "r" * 24, "redis_sentinel_password": "s" * 24}
    url = "postgresql+psycopg://app:a-real-password-here@db/app"
{%- if cookiecutter.use_flower == "yes" %}
    flower = Settings(
        environment="production", process_kind="flower", flower_password="f" * 24, **strong
    )
    assert flower.process_kind == "flower"  # no DATABASE_URL needed
    with pytest.raises(ValidationError, match="FLOWER_PASSWORD"):
        Settings(environment="production", process_kind="flower", flower_password="", **strong)
{%- endif %}
    for kind in ("api", "worker", "beat"):
        assert Settings(environment="production", process_kind=kind, database_url=url, **strong)
        with pytest.raises(ValidationError, match="REDIS_PASSWORD"):
            Settings(
                environment="production", process_kind=kind, database_url=url, redis_password=""
            )
    assert Settings(environment="production", process_kind="migrate", database_url=url)
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(
            environment="production",
            process_kind="migrate",
            database_url="postgresql+psycopg://app:change-me-database-password@db/app",
        )


def test_secrets_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no project .env in the way
    secret = tmp_path / "redis-password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(secret))
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)
    assert Settings().redis_password.get_secret_value() == "from-a-file"
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-environment")
    with pytest.raises(ValueError, match="give REDIS_PASSWORD or REDIS_PASSWORD_FILE"):
        Settings()
    monkeypatch.delenv("REDIS_PASSWORD")
    monkeypatch.setenv("REDIS_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="REDIS_PASSWORD_FILE: cannot read"):
        Settings()
{%- if cookiecutter.database != "sqlite" %}


def test_the_database_password_comes_apart_from_the_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose keeps DATABASE_URL plain and the password in a secret file."""
    monkeypatch.chdir(tmp_path)
    secret = tmp_path / "database-password"
    secret.write_text("p@ss/word:1\n")
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(secret))
    monkeypatch.delenv("DATABASE_PASSWORD", raising=False)
    settings = Settings(database_url="postgresql+psycopg://app@db:5432/app")
    assert make_url(settings.database_dsn).password == "p@ss/word:1"
    assert make_url(settings.database_dsn).host == "db"
    assert "p@ss" not in settings.database_url.get_secret_value()
    monkeypatch.delenv("DATABASE_PASSWORD_FILE")
    # The example's password is refused in production wherever it comes from.
    with pytest.raises(ValidationError, match="DATABASE_URL"):
        Settings(
            environment="production",
            database_url="postgresql+psycopg://app@db/app",
            database_password="change-me-database-password",
        )
{%- endif %}
