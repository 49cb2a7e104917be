"""Private ledger databases: PostgreSQL, MariaDB (for `mysql`) or an SQLite file.

Servers run as plain processes on a free loopback port with their data in a temporary
directory, and get a role `app` with a random password owning a database `app`. Setup SQL
goes through the server's own client (psql, mariadb), so the harness needs no DB driver.
`url` is the SQLAlchemy URL the project's DATABASE_URL expects. With `tls=True` a server
takes TCP clients over TLS only (tests/harness/tls.py), and `env()` tells the project to
verify its certificate.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Self

from tests.harness.binaries import require_binary, require_user
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import CommandFailed, ProcessIdentity, SupervisedProcess, run_command
from tests.harness.scratch import ScratchDir
from tests.harness.tls import Certificates
from tests.harness.waiting import wait_until

APP_USER = "app"
APP_DATABASE = "app"
_CLIENT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}


class Database:
    """Common interface: start/stop, `url`, `env()`, `query()`, processes for leak checks."""

    kind = ""

    def __init__(self, workdir: str | Path | None, prefix: str) -> None:
        self._scratch = ScratchDir(workdir, prefix)
        self.workdir = self._scratch.path
        self.password = secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url}

    def start(self, timeout: float = 60) -> Self:
        return self

    def stop(self) -> None:
        for process in self.processes():
            process.stop()
        self._scratch.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def processes(self) -> list[SupervisedProcess]:
        return []

    def identities(self) -> set[ProcessIdentity]:
        return {identity for p in self.processes() for identity in p.identities()}

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """Run SQL as the administrator on the app database; rows as tuples of text."""
        raise NotImplementedError


class _ServerDatabase(Database):
    """A database server process of our own, its data in a private directory.

    `start()` is one script for every server; a subclass fills in its steps: the binaries
    (`_find_binaries`), the data directory (`_init_command`), the server (`_server_command`)
    and the app role and database (`_setup_sql`). Setup SQL runs as the administrator
    through the server's own client (`_admin`), once that client gets an answer.
    """

    name = ""
    #: The SQLAlchemy driver of its URL.
    scheme = ""
    #: Where the administrator connects for readiness and setup (None: no database).
    admin_database: str | None = None
    #: The system account the server runs as when the tests run as root (None: root).
    service_user: str | None = None
    stop_signal = signal.SIGTERM

    def __init__(self, workdir: str | Path | None, prefix: str, *, tls: bool = False) -> None:
        super().__init__(workdir, prefix)
        self.port = free_port()
        self._private: Path | None = None
        self._process: SupervisedProcess | None = None
        self.tls = Certificates(self.workdir / "tls") if tls else None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{APP_USER}:{self.password}@{LOOPBACK}:{self.port}/{APP_DATABASE}"

    # --- the steps of a server ----------------------------------------------------------

    def _find_binaries(self) -> None:
        raise NotImplementedError

    def _init_command(self, data: Path) -> list[str]:
        raise NotImplementedError

    def _server_command(self, data: Path) -> list[str]:
        raise NotImplementedError

    def _setup_sql(self) -> list[str]:
        raise NotImplementedError

    def _admin(self, *statements: str, database: str | None = APP_DATABASE) -> str:
        """Run SQL through the server's own command-line client; its text output."""
        raise NotImplementedError

    # --- the script ---------------------------------------------------------------------

    @property
    def _owner(self) -> str | None:
        """Who the server's files belong to: its service user under root, else us."""
        return self.service_user if os.geteuid() == 0 else None

    def start(self, timeout: float = 60) -> Self:
        self._find_binaries()
        if self._owner is not None:
            require_user(self._owner, "postgresql")
        # The server must reach its files: a directory of its own in the system temp dir
        # (pytest's tmp_path is private to the test user).
        self._private = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        (self._private / "run").mkdir()
        if self._owner is not None:
            for path in (self._private, self._private / "run"):
                shutil.chown(path, self._owner, self._owner)
        data = self._private / "data"
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            run_command(
                self._init_command(data),
                env=_CLIENT_ENV,
                cwd=self._private,
                timeout=120,
                log_file=log_dir / f"{self.name}-init.log",
            )
            process = SupervisedProcess(
                self.name,
                self._server_command(data),
                env=_CLIENT_ENV,
                cwd=self._private,
                log_dir=log_dir,
                restart=False,
                stop_signal=self.stop_signal,
                stop_timeout=30,
                user=self._owner,
            )
            self._process = process.start()

            def answers() -> bool:
                if not process.running:
                    raise RuntimeError(f"{self.name} exited\n{process.log_tail()}")
                self._admin("SELECT 1", database=self.admin_database)
                return True

            what = f"{self.name} answering its client"
            wait_until(answers, timeout, what, ignore=(CommandFailed,), detail=process.log_tail)
            self._admin(*self._setup_sql(), database=self.admin_database)
        except BaseException:
            self.stop()
            raise
        return self

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tls is not None:
            env["DATABASE_TLS_CA_FILE"] = str(self.tls.ca)
        return env

    def _server_certificate(self) -> tuple[Path, Path]:
        """The server's certificate and key, copied where its process can read them."""
        assert self.tls is not None, "a server without tls=True has no certificate"
        assert self._private is not None, "start() first"
        directory = self._private / "tls"
        directory.mkdir()
        copies = []
        for source in (self.tls.server_cert, self.tls.server_key):
            copy = directory / source.name
            shutil.copyfile(source, copy)
            copy.chmod(0o600)
            copies.append(copy)
        if self._owner is not None:
            for path in (directory, *copies):
                shutil.chown(path, self._owner, self._owner)
        return copies[0], copies[1]

    def query(self, sql: str) -> list[tuple[str, ...]]:
        return [tuple(line.split("\t")) for line in self._admin(sql).splitlines() if line]

    def processes(self) -> list[SupervisedProcess]:
        return [] if self._process is None else [self._process]

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._private is not None:
                shutil.rmtree(self._private, ignore_errors=True)


class PostgresServer(_ServerDatabase):
    """A private PostgreSQL cluster (initdb and the server as `postgres` under root)."""

    kind = "postgresql"
    name = "postgres"
    scheme = "postgresql+psycopg"
    admin_database = "postgres"
    service_user = "postgres"
    # SIGINT = fast shutdown: SIGTERM would wait for clients to disconnect.
    stop_signal = signal.SIGINT

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, "postgres-", tls=tls)
        self._psql = "psql"

    @property
    def socket_dir(self) -> Path:
        assert self._private is not None, "start() first"
        return self._private / "run"

    def _find_binaries(self) -> None:
        self._initdb = require_binary("initdb", "postgresql")
        self._postgres = require_binary("postgres", "postgresql")
        self._psql = require_binary("psql", "postgresql-client")

    def _init_command(self, data: Path) -> list[str]:
        # initdb refuses root: it runs as the server's user.
        owner = self._owner
        runuser = (
            [] if owner is None else [require_binary("runuser", "util-linux"), "-u", owner, "--"]
        )
        return [
            *runuser,
            self._initdb,
            f"--pgdata={data}",
            "--username=postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]

    def _server_command(self, data: Path) -> list[str]:
        settings = {
            "port": self.port,
            "unix_socket_directories": self.socket_dir,
            "listen_addresses": LOOPBACK,
            # Durability against OS crashes is not what these tests are about.
            "fsync": "off",
            "full_page_writes": "off",
            **self._tls_settings(data),
        }
        return [self._postgres, "-D", str(data), *(f"--{k}={v}" for k, v in settings.items())]

    def _tls_settings(self, data: Path) -> dict[str, str]:
        """Server settings for TLS, and pg_hba refusing TCP clients without it."""
        if self.tls is None:
            return {}
        cert, key = self._server_certificate()
        hba = data / "pg_hba.conf"
        hba.write_text("hostnossl all all all reject\n" + hba.read_text())
        return {"ssl": "on", "ssl_cert_file": str(cert), "ssl_key_file": str(key)}

    def _setup_sql(self) -> list[str]:
        return [
            f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.password}'",
            f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}",
        ]

    def _admin(self, *statements: str, database: str | None = APP_DATABASE) -> str:
        command = [
            self._psql,
            "--no-psqlrc",
            "--no-align",
            "--tuples-only",
            "--field-separator=\t",
            "--set=ON_ERROR_STOP=1",
            f"--host={self.socket_dir}",
            f"--port={self.port}",
            "--username=postgres",
            f"--dbname={database or self.admin_database}",
        ]
        for statement in statements:
            command += ["--command", statement]
        return run_command(command, env=_CLIENT_ENV, timeout=30)


class MariaDBServer(_ServerDatabase):
    """A private MariaDB server (the `mysql` answer), data in a temporary directory."""

    kind = "mysql"
    name = "mariadb"
    scheme = "mysql+pymysql"

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, "mariadb-", tls=tls)
        self._client = "mariadb"

    @property
    def socket_path(self) -> Path:
        assert self._private is not None, "start() first"
        return self._private / "run" / "mysqld.sock"

    @property
    def _as_root(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def _find_binaries(self) -> None:
        self._install_db = require_binary("mariadb-install-db", "mariadb-server")
        self._mariadbd = require_binary("mariadbd", "mariadb-server")
        self._client = require_binary("mariadb", "mariadb-client")

    def _init_command(self, data: Path) -> list[str]:
        # --no-defaults first: the machine's /etc/mysql configuration must not apply.
        return [
            self._install_db,
            "--no-defaults",
            f"--datadir={data}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            *self._as_root,
        ]

    def _server_command(self, data: Path) -> list[str]:
        run = data.parent / "run"
        return [
            self._mariadbd,
            "--no-defaults",
            f"--datadir={data}",
            f"--port={self.port}",
            f"--socket={self.socket_path}",
            f"--pid-file={run / 'mariadbd.pid'}",
            f"--tmpdir={run}",
            *self._as_root,
            "--skip-networking=0",
            f"--bind-address={LOOPBACK}",
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            *self._tls_options(),
        ]

    def _tls_options(self) -> list[str]:
        """Server options for TLS; TCP clients without it are refused (the socket is local)."""
        if self.tls is None:
            return []
        cert, key = self._server_certificate()
        return [
            f"--ssl-cert={cert}",
            f"--ssl-key={key}",
            f"--ssl-ca={self.tls.ca}",
            "--require-secure-transport=ON",
        ]

    def _setup_sql(self) -> list[str]:
        return [
            f"CREATE DATABASE {APP_DATABASE} CHARACTER SET utf8mb4",
            f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{self.password}'",
            f"CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY '{self.password}'",
            f"GRANT ALL PRIVILEGES ON {APP_DATABASE}.* TO '{APP_USER}'@'%'",
            f"GRANT ALL PRIVILEGES ON {APP_DATABASE}.* TO '{APP_USER}'@'localhost'",
            "FLUSH PRIVILEGES",
        ]

    def _admin(self, *statements: str, database: str | None = APP_DATABASE) -> str:
        command = [
            self._client,
            "--no-defaults",
            f"--socket={self.socket_path}",
            "--user=root",
            "--batch",
            "--skip-column-names",
            "--execute=" + ";\n".join(statements),
        ]
        if database is not None:
            command.append(database)
        return run_command(command, env=_CLIENT_ENV, timeout=30)


class SqliteDatabase(Database):
    """An SQLite file in the working directory: no server process at all."""

    kind = "sqlite"

    def __init__(self, workdir: str | Path | None = None) -> None:
        super().__init__(workdir, "sqlite-")
        self.path = self.workdir / "ledger.sqlite3"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def query(self, sql: str) -> list[tuple[str, ...]]:
        connection = sqlite3.connect(self.path)
        try:
            rows = connection.execute(sql).fetchall()
            connection.commit()
        finally:
            connection.close()
        return [tuple("" if value is None else str(value) for value in row) for row in rows]


_KINDS: dict[str, type[Database]] = {
    "postgresql": PostgresServer,
    "postgres": PostgresServer,
    "mysql": MariaDBServer,
    "mariadb": MariaDBServer,
    "sqlite": SqliteDatabase,
}


def kind_of_url(url: str) -> str:
    """postgresql, mysql or sqlite, from an SQLAlchemy URL such as DATABASE_URL."""
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _KINDS:
        raise ValueError(f"no test database for URL scheme {scheme!r}")
    return _KINDS[scheme].kind


def database_for(kind: str, workdir: str | Path | None = None, **options: Any) -> Database:
    """An unstarted database of `kind`: postgresql, mysql (MariaDB) or sqlite."""
    try:
        factory = _KINDS[kind.lower()]
    except KeyError:
        raise ValueError(f"unknown database kind {kind!r}: one of {sorted(_KINDS)}") from None
    return factory(workdir, **options)
