"""Every knob of the service, read from the environment (or `.env`) in one typed place."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
{%- if cookiecutter.database != "sqlite" %}
from sqlalchemy.engine import make_url
{%- endif %}

from {{ cookiecutter.package_name }}.queues import QueueName

Pool = Literal["prefork", "gevent", "solo", "threads"]
CommaList = Annotated[tuple[str, ...], NoDecode]


@dataclass(frozen=True)
class WorkerGroup:
    """How one group of workers runs: its name, the queues it consumes, pool and slots."""

    name: str
    queues: tuple[str, ...]
    pool: Pool
    concurrency: int


ENV_FILE = ".env"


class SecretFiles(PydanticBaseSettingsSource):
    """`<NAME>_FILE` gives the path of a file holding secret setting <NAME>.

    The convention of Docker secrets and Kubernetes secret volumes: the value never sits
    in the environment, where every child process and `docker inspect` can read it. A
    secret with a `_file` setting of its own (API_KEYS_FILE) is read by its consumer.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # every value comes from __call__

    def __call__(self) -> dict[str, Any]:
        given = {key.upper(): value for key, value in dotenv_values(ENV_FILE).items()}
        given.update({key.upper(): value for key, value in os.environ.items()})
        fields = self.settings_cls.model_fields
        found: dict[str, Any] = {}
        for name, field in fields.items():
            if field.annotation is not SecretStr or f"{name}_file" in fields:
                continue
            variable = name.upper()
            path = given.get(f"{variable}_FILE")
            if not path:
                continue
            if given.get(variable):
                raise ValueError(f"give {variable} or {variable}_FILE, not both")
            try:
                found[name] = Path(path).read_text().rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{variable}_FILE: cannot read {path}: {exc.strerror}") from exc
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # A file given for a secret beats an empty variable of the same name.
        return (init_settings, SecretFiles(settings_cls), env_settings, dotenv_settings)

    service_name: str = "{{ cookiecutter.project_slug }}"
    environment: Literal["development", "test", "production"] = "production"
    # The kind of this process (compose sets it per service, each holding only its own
    # secret files): which secrets production requires. Empty: all of them.
    process_kind: Literal["", "api", "worker", "beat",{% if cookiecutter.use_flower == "yes" %} "flower",{% endif %} "migrate"] = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    # --- Redis: broker (db 0) and result backend (db 1) --------------------------------
    redis_mode: Literal["sentinel", "standalone"] = "{{ cookiecutter.redis_mode }}"
    redis_sentinels: CommaList = ("127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381")
    redis_master_name: str = "mymaster"
    redis_address: str = "127.0.0.1:6379"  # standalone mode only
    # Each component its own ACL user (deploy/redis/users.acl); "" = Redis' default user.
    redis_username: str = ""
    redis_password: SecretStr = SecretStr("")
    # The user clients ask Sentinel as: it may only look up the master and its peers.
    redis_sentinel_username: str = ""
    redis_sentinel_password: SecretStr = SecretStr("")
    redis_broker_db: int = Field(default=0, ge=0, le=15)
    redis_result_db: int = Field(default=1, ge=0, le=15)
    # A failover leaves half-open sockets: without a timeout a publish waits forever.
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    redis_socket_connect_timeout: float = Field(default=2.0, gt=0)
    # Ping idle connections this often so a dead master is noticed between commands.
    redis_health_check_interval: int = Field(default=10, ge=1)
    # TLS on every Redis and Sentinel connection (`rediss://`, Sentinel over TLS): the
    # servers' certificates are verified, host name included, against REDIS_TLS_CA_FILE
    # (empty: the system's CAs). A client certificate and key go to servers that ask for one.
    redis_tls: bool = False
    redis_tls_ca_file: str = ""
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""

    # --- Ledger database -------------------------------------------------------------
{%- if cookiecutter.database == "postgresql" %}
    database_url: SecretStr = SecretStr(
        "postgresql+psycopg://app:change-me-database-password@127.0.0.1:5432/app"
    )
{%- elif cookiecutter.database == "mysql" %}
    database_url: SecretStr = SecretStr(
        "mysql+pymysql://app:change-me-database-password@127.0.0.1:3306/app"
    )
{%- endif %}
{%- if cookiecutter.database != "sqlite" %}
    # The URL's password on its own, so it can come from a file (DATABASE_PASSWORD_FILE,
    # compose's secrets) while DATABASE_URL stays plain configuration. Set, it replaces
    # the URL's password.
    database_password: SecretStr = SecretStr("")
{%- else %}
    database_url: SecretStr = SecretStr("sqlite:///var/ledger.sqlite3")
{%- endif %}
    # A dead database must fail a request or a task fast, not hang it.
    database_timeout: int = Field(default=5, ge=1)
    # Connections each process keeps open (as many again may open under a burst).
    database_pool_size: int = Field(default=10, ge=1)
{%- if cookiecutter.database != "sqlite" %}
    # TLS to the database, its certificate verified against this CA, host name included
    # (PostgreSQL sslmode=verify-full; MySQL/MariaDB ssl with check_hostname). Empty: as
    # DATABASE_URL says.
    database_tls_ca_file: str = ""
{%- endif %}

    # --- Ledger: attempts, reconcile, retention ---------------------------------------
    # Every start counts (first run, retries, redeliveries); past this the task is DEAD.
    ledger_max_attempts: int = Field(default=10, ge=1)
    reconcile_interval: float = Field(default=60.0, gt=0)
    # A row still QUEUED this long was never handed to the broker: publish it again.
    reconcile_queued_after: int = Field(default=30, ge=1)
    # A row PUBLISHED this long without starting may have been lost in a failover.
    reconcile_published_after: int = Field(default=1800, ge=1)
    reconcile_batch_size: int = Field(default=500, ge=1)
    ledger_retention_days: int = Field(default=30, ge=1)
    ledger_prune_crontab: str = "30 4 * * *"
    # Beat: how often the schedule is re-read from the database, and the leader lease.
    beat_reload_interval: float = Field(default=5.0, gt=0)
    beat_lease_seconds: float = Field(default=30.0, gt=0)

    # --- Time limits, redelivery, retries (seconds) ----------------------------------
    task_soft_time_limit: int = Field(default=300, gt=0)
    task_time_limit: int = Field(default=330, gt=0)
    visibility_timeout: int = Field(default=1800, gt=0)
    unacked_restore_interval: int = Field(default=10, ge=1)
    result_expires: int = Field(default=3 * 24 * 3600, gt=0)
    task_max_retries: int = Field(default=5, ge=0)
    task_retry_backoff: int = Field(default=2, ge=1)
    task_retry_backoff_max: int = Field(default=600, ge=1)
    task_default_retry_delay: int = Field(default=10, ge=0)
    publish_retry_max_retries: int = Field(default=20, ge=0)
    publish_retry_interval_max: float = Field(default=1.0, ge=0)
    worker_soft_shutdown_timeout: float = Field(default=10.0, ge=0)

    # --- Worker groups: one per queue, each with its own pool --------------------------
    worker_high_pool: Pool = "prefork"
    worker_high_concurrency: int = Field(default=2, ge=1)
    worker_default_pool: Pool = "prefork"
    worker_default_concurrency: int = Field(default=2, ge=1)
    worker_low_pool: Pool = "gevent"
    worker_low_concurrency: int = Field(default=50, ge=1)
    worker_max_tasks_per_child: int = Field(default=1000, ge=1)
    worker_max_memory_per_child_kib: int = Field(default=512_000, ge=1024)
    broker_pool_limit: int = Field(default=10, ge=1)
    # A worker silent to its own ping this long exits for a restart (observability/watchdog.py).
    worker_watchdog_interval: float = Field(default=15.0, gt=0)
    worker_watchdog_timeout: float = Field(default=120.0, gt=0)
    # Worker liveness (ledger/heartbeats.py): each worker process writes a heartbeat this
    # often; one silent for WORKER_DEAD_AFTER counts as dead and its running tasks are
    # sent again at once, whatever the visibility timeout.
    worker_heartbeat_interval: float = Field(default=5.0, gt=0)
    worker_dead_after: float = Field(default=15.0, gt=0)
    # Touched by a worker answering its own ping and by each beat tick; container
    # healthchecks read its age (healthcheck.py). Empty: no file is written.
    heartbeat_file: str = ""

    # --- Beat -------------------------------------------------------------------------
    beat_tick_seconds: float = Field(default=60.0, gt=0)
    beat_report_crontab: str = "0 3 * * *"

    # Most subtasks one demo.reports.build_report may fan out to: each is a message and a
    # result key, and the chord waits for every one, so one request must not queue thousands.
    report_max_chunks: int = Field(default=100, ge=1)

    # --- API --------------------------------------------------------------------------
    api_bind: str = "0.0.0.0:8000"  # a container listens on all interfaces
    api_workers: int = Field(default=2, ge=1)
    api_timeout: int = Field(default=60, ge=1)
    api_max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    api_readiness_timeout: int = Field(default=2, ge=1)
    api_task_allowlist: CommaList = (
        "demo.echo",
        "demo.sleep",
        "demo.flaky",
        "demo.fail",
        "demo.record_effect",
        "demo.urgent_ping",
        "demo.reports.build_report",
    )
    # Host headers the API answers (it repeats the host in Location and status_url);
    # "*.example.com" matches subdomains. /healthz, /readyz and /metrics take any host.
    api_trusted_hosts: CommaList = ("localhost", "127.0.0.1", "api")
    # Swagger UI at /docs and the schema at /openapi.json; false hides both.
    api_docs: bool = True

    # --- API: who may call it, and how much it takes in (api/auth.py, api/admission.py) ---
    # keys: every /api/v1 call needs an API key (X-API-Key) or, with API_OIDC_ISSUER set,
    # a bearer token. none: anyone may call anything (ENVIRONMENT=development only).
    api_auth: Literal["keys", "none"] = "keys"
    # The keys as a JSON document (api/keys.py): hashes, names and scopes, never a key.
    # API_KEYS_FILE holds the same document in a file, re-read when it changes (rotation
    # without a restart); `python -m {{ cookiecutter.package_name }}.api.keys` writes it.
    api_keys: SecretStr = SecretStr("")
    api_keys_file: str = ""
    # OIDC bearer tokens: the issuer (`iss`), the audience (`aud`) and where its signing
    # keys are (cached for API_OIDC_JWKS_CACHE_SECONDS); scopes come from one claim.
    api_oidc_issuer: str = ""
    api_oidc_audience: str = ""
    api_oidc_jwks_url: str = ""
    api_oidc_scopes_claim: str = "scope"
    api_oidc_algorithms: CommaList = ("RS256", "ES256")
    api_oidc_jwks_cache_seconds: int = Field(default=300, ge=1)
    # Per caller, shared by every API process through Redis: e.g. "20/second", "1000/minute".
    api_rate_limit: str = Field(default="50/second", pattern=r"^\d+\s*/\s*\d*\s*[a-z]+$")
    # A queue with this many messages waiting takes no more submissions (503 + Retry-After):
    # intake stops before Redis memory fills. 0 = no bound.
    api_max_backlog_high: int = Field(default=1_000, ge=0)
    api_max_backlog_default: int = Field(default=10_000, ge=0)
    api_max_backlog_low: int = Field(default=10_000, ge=0)
{%- if cookiecutter.use_sentry == "yes" %}

    # --- Sentry (empty DSN = off) -----------------------------------------------------
    sentry_dsn: SecretStr = SecretStr("")
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0, le=1)
{%- endif %}
{%- if cookiecutter.use_flower == "yes" %}

    # --- Flower -----------------------------------------------------------------------
    flower_port: int = Field(default=5555, ge=1, le=65535)
    flower_user: str = Field(default="admin", pattern=r"^[^:\s]+$")
    flower_password: SecretStr = SecretStr("change-me-flower-password")
{%- endif %}

    @field_validator(
        "redis_sentinels",
        "api_task_allowlist",
        "api_oidc_algorithms",
        "api_trusted_hosts",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(item.strip() for item in value.split(",") if item.strip())
        return value

    @field_validator("beat_report_crontab", "ledger_prune_crontab")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a crontab needs five fields: minute hour day month weekday")
        return value

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Settings:
        if self.task_time_limit <= self.task_soft_time_limit:
            raise ValueError("TASK_TIME_LIMIT must exceed TASK_SOFT_TIME_LIMIT (cleanup margin)")
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "VISIBILITY_TIMEOUT must exceed TASK_TIME_LIMIT, or a task still running"
                " is redelivered to a second worker"
            )
        if self.task_retry_backoff_max >= self.max_countdown:
            raise ValueError(
                "TASK_RETRY_BACKOFF_MAX must stay below VISIBILITY_TIMEOUT - TASK_TIME_LIMIT,"
                " or a waiting retry is redelivered while it waits"
            )
        if self.ledger_max_attempts <= self.task_max_retries:
            raise ValueError(
                "LEDGER_MAX_ATTEMPTS must exceed TASK_MAX_RETRIES, or retries are cut short"
            )
        if self.worker_watchdog_timeout < 2 * self.worker_watchdog_interval:
            raise ValueError("WORKER_WATCHDOG_TIMEOUT must be at least two intervals")
        if self.worker_dead_after < 2 * self.worker_heartbeat_interval:
            raise ValueError(
                "WORKER_DEAD_AFTER must be at least twice WORKER_HEARTBEAT_INTERVAL, or one"
                " late heartbeat declares a live worker dead"
            )
        if self.beat_lease_seconds <= 2 * self.beat_reload_interval:
            raise ValueError("BEAT_LEASE_SECONDS must exceed twice BEAT_RELOAD_INTERVAL")
        if self.redis_mode == "sentinel" and len(self.redis_sentinels) < 1:
            raise ValueError("REDIS_SENTINELS needs at least one host:port")
        return self

    @model_validator(mode="after")
    def _tls_files_are_readable(self) -> Settings:
        redis_files = {
            "REDIS_TLS_CA_FILE": self.redis_tls_ca_file,
            "REDIS_TLS_CERT_FILE": self.redis_tls_cert_file,
            "REDIS_TLS_KEY_FILE": self.redis_tls_key_file,
        }
        given = [name for name, path in redis_files.items() if path]
        if given and not self.redis_tls:
            raise ValueError(f"{', '.join(given)} given but REDIS_TLS is off: set REDIS_TLS=true")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("a client certificate needs both REDIS_TLS_CERT_FILE and _KEY_FILE")
{%- if cookiecutter.database != "sqlite" %}
        files = {**redis_files, "DATABASE_TLS_CA_FILE": self.database_tls_ca_file}
{%- else %}
        files = redis_files
{%- endif %}
        for name, path in files.items():
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{name}: cannot read {path}")
        return self

    @model_validator(mode="after")
    def _access_is_consistent(self) -> Settings:
        if self.api_auth == "none" and self.environment != "development":
            raise ValueError(
                "API_AUTH=none lets anyone submit, cancel and replay tasks: it is allowed only"
                f" with ENVIRONMENT=development (ENVIRONMENT is {self.environment})"
            )
        if self.api_keys.get_secret_value() and self.api_keys_file:
            raise ValueError("give API_KEYS or API_KEYS_FILE, not both")
        oidc = {
            "API_OIDC_ISSUER": self.api_oidc_issuer,
            "API_OIDC_AUDIENCE": self.api_oidc_audience,
            "API_OIDC_JWKS_URL": self.api_oidc_jwks_url,
        }
        if any(oidc.values()) and not all(oidc.values()):
            missing = ", ".join(name for name, value in oidc.items() if not value)
            raise ValueError(f"OIDC bearer tokens need all of {', '.join(oidc)}; missing {missing}")
        if self.environment == "production":
            weak = [name for name in self._required_secrets() if _is_placeholder(self, name)]
            if weak:
                raise ValueError(
                    "ENVIRONMENT=production refuses empty or placeholder secrets:"
                    f" {', '.join(name.upper() for name in weak)} (set real values, or"
                    " ENVIRONMENT=development for a local run)"
                )
        return self

    def _required_secrets(self) -> tuple[str, ...]:
        """The secrets a production deployment must set (an empty one is an open door)."""
        kind = self.process_kind
{%- if cookiecutter.use_flower == "yes" %}
        names = [] if kind == "flower" else ["database_url"]  # Flower never opens the ledger
{%- else %}
        names = ["database_url"]
{%- endif %}
        if kind != "migrate":  # the migrations touch the database only
            names.append("redis_password")
            if self.redis_mode == "sentinel":
                names.append("redis_sentinel_password")
{%- if cookiecutter.use_flower == "yes" %}
        if kind in ("", "flower"):
            names.append("flower_password")
{%- endif %}
        return tuple(names)

    @property
    def reconcile_started_after(self) -> int:
        """A STARTED row older than this lost its worker and kombu did not restore it."""
        return self.visibility_timeout + 3 * self.unacked_restore_interval

    @property
    def reconcile_retry_after(self) -> int:
        """A RETRY row older than this (and due) lost its retry message: due within the
        backoff cap, it then had as long to start as a published message."""
        return self.reconcile_published_after + self.task_retry_backoff_max

    @property
    def max_countdown(self) -> int:
        """Longest delay a message may wait in a worker: it must be acked within the VT."""
        return self.visibility_timeout - self.task_time_limit

    def _redis_url(self, db: int) -> str:
        username = quote(self.redis_username, safe="")
        password = quote(self.redis_password.get_secret_value(), safe="")
        auth = f"{username}:{password}@" if password or username else ""
        if self.redis_mode == "standalone":
            scheme = "rediss" if self.redis_tls else "redis"
            return f"{scheme}://{auth}{self.redis_address}/{db}"
        return ";".join(f"sentinel://{auth}{node}/{db}" for node in self.redis_sentinels)

    def redis_tls_options(self) -> dict[str, Any]:
        """redis-py's TLS arguments (kombu and Celery take the same); empty with TLS off."""
        if not self.redis_tls:
            return {}
        options: dict[str, Any] = {
            "ssl_cert_reqs": ssl.CERT_REQUIRED,
            "ssl_check_hostname": True,
            "ssl_ca_certs": self.redis_tls_ca_file or None,
        }
        if self.redis_tls_cert_file:
            options["ssl_certfile"] = self.redis_tls_cert_file
            options["ssl_keyfile"] = self.redis_tls_key_file
        return options

    @property
    def database_dsn(self) -> str:
        """DATABASE_URL with DATABASE_PASSWORD in it, if that is set."""
        url = self.database_url.get_secret_value()
{%- if cookiecutter.database != "sqlite" %}
        password = self.database_password.get_secret_value()
        if password:
            return make_url(url).set(password=password).render_as_string(hide_password=False)
{%- endif %}
        return url

    @property
    def broker_url(self) -> str:
        return self._redis_url(self.redis_broker_db)

    @property
    def result_backend_url(self) -> str:
        return self._redis_url(self.redis_result_db)

    @property
    def worker_groups(self) -> dict[QueueName, WorkerGroup]:
        """The worker group of each queue, from WORKER_<QUEUE>_POOL / _CONCURRENCY."""
        return {
            "high": WorkerGroup(
                "high", ("high",), self.worker_high_pool, self.worker_high_concurrency
            ),
            "default": WorkerGroup(
                "default", ("default",), self.worker_default_pool, self.worker_default_concurrency
            ),
            "low": WorkerGroup("low", ("low",), self.worker_low_pool, self.worker_low_concurrency),
        }

    def worker_group(self, queue: QueueName) -> WorkerGroup:
        return self.worker_groups[queue]

    @property
    def api_max_backlogs(self) -> dict[QueueName, int]:
        """API_MAX_BACKLOG_<QUEUE> by queue."""
        return {
            "high": self.api_max_backlog_high,
            "default": self.api_max_backlog_default,
            "low": self.api_max_backlog_low,
        }


PLACEHOLDER_MARK = "change-me"


def _is_placeholder(settings: Settings, name: str) -> bool:
    if name == "database_url":
        # SQLite has no password; a server URL must not carry the example's.
        return PLACEHOLDER_MARK in settings.database_dsn
    value: SecretStr = getattr(settings, name)
    secret = value.get_secret_value()
    return not secret or PLACEHOLDER_MARK in secret


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
