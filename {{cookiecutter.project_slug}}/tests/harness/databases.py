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
import time
from pathlib import Path
from typing import Any

from tests.harness.binaries import require_binary, require_user
from tests.harness.ports import LOOPBACK, free_port
from tests.harness.processes import (
    CommandFailed,
    ProcessIdentity,
    SupervisedProcess,
    run_command,
)
from tests.harness.scratch import ScratchDir
from tests.harness.tls import Certificates

APP_USER = "app"
APP_DATABASE = "app"
_CLIENT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
}


def _wait_for(command: list[str], timeout: float, what: str, process: SupervisedProcess) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            run_command(command, env=_CLIENT_ENV, timeout=10)
            return
        except CommandFailed as exc:
            if not process.running or time.monotonic() > deadline:
                raise TimeoutError(f"{what} not ready: {exc}\n{process.log_tail()}") from None
        time.sleep(0.2)


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

    def start(self, timeout: float = 60) -> Database:
        return self

    def stop(self) -> None:
        for process in self.processes():
            process.stop()
        self._scratch.cleanup()

    def __enter__(self) -> Database:
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
    """A database server process of our own, its data in a private directory."""

    def __init__(self, workdir: str | Path | None, prefix: str, *, tls: bool = False) -> None:
        super().__init__(workdir, prefix)
        self.port = free_port()
        self._private: Path | None = None
        self._process: SupervisedProcess | None = None
        self.tls = Certificates(self.workdir / "tls") if tls else None

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.tls is not None:
            env["DATABASE_TLS_CA_FILE"] = str(self.tls.ca)
        return env

    def _server_certificate(self, owner: str | None) -> tuple[Path, Path]:
        """The server's certificate and key, copied where its process (`owner`) reads them."""
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
        if owner is not None:
            for path in (directory, *copies):
                shutil.chown(path, owner, owner)
        return copies[0], copies[1]

    def _admin(self, *statements: str) -> str:
        """Run SQL through the server's own command-line client; its text output."""
        raise NotImplementedError

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
    """A private PostgreSQL cluster (initdb as `postgres` when running as root)."""

    kind = "postgresql"

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, "postgres-", tls=tls)
        self._psql = "psql"

    @property
    def url(self) -> str:
        return (
            f"postgresql+psycopg://{APP_USER}:{self.password}@{LOOPBACK}:{self.port}/{APP_DATABASE}"
        )

    @property
    def socket_dir(self) -> Path:
        assert self._private is not None, "start() first"
        return self._private / "socket"

    def _as_service_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return [require_binary("runuser", "util-linux"), "-u", "postgres", "--", *argv]

    def start(self, timeout: float = 60) -> PostgresServer:
        initdb = require_binary("initdb", "postgresql")
        postgres = require_binary("postgres", "postgresql")
        self._psql = require_binary("psql", "postgresql-client")
        pg_isready = require_binary("pg_isready", "postgresql-client")
        as_root = os.geteuid() == 0
        if as_root:
            require_user("postgres", "postgresql")
        # initdb refuses root, and the server must reach its files: a directory of its own
        # in the system temp dir (pytest's tmp_path is private to the test user).
        self._private = Path(tempfile.mkdtemp(prefix="pgdata-"))
        data = self._private / "data"
        self.socket_dir.mkdir()
        if as_root:
            for path in (self._private, self.socket_dir):
                shutil.chown(path, "postgres", "postgres")
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            run_command(
                self._as_service_user(
                    [
                        initdb,
                        f"--pgdata={data}",
                        "--username=postgres",
                        "--auth-local=trust",
                        "--auth-host=scram-sha-256",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ]
                ),
                env=_CLIENT_ENV,
                cwd=self._private,
                timeout=120,
                log_file=log_dir / "initdb.log",
            )
            self._process = SupervisedProcess(
                "postgres",
                [
                    postgres,
                    "-D",
                    str(data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.socket_dir),
                    "-c",
                    f"listen_addresses={LOOPBACK}",
                    # Durability against OS crashes is not what these tests are about.
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    *self._postgres_tls(data, "postgres" if as_root else None),
                ],
                env=_CLIENT_ENV,
                cwd=self._private,
                log_dir=log_dir,
                restart=False,
                # SIGINT = fast shutdown: SIGTERM would wait for clients to disconnect.
                stop_signal=signal.SIGINT,
                stop_timeout=30,
                user="postgres" if as_root else None,
            ).start()
            _wait_for(
                [pg_isready, "-q", "-h", str(self.socket_dir), "-p", str(self.port)],
                timeout,
                "PostgreSQL",
                self._process,
            )
            self._admin(
                f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.password}'",
                f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}",
                database="postgres",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _postgres_tls(self, data: Path, owner: str | None) -> list[str]:
        """Server options for TLS, and pg_hba refusing TCP clients without it."""
        if self.tls is None:
            return []
        cert, key = self._server_certificate(owner)
        hba = data / "pg_hba.conf"
        hba.write_text("hostnossl all all all reject\n" + hba.read_text())
        return ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]

    def _admin(self, *statements: str, database: str = APP_DATABASE) -> str:
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
            f"--dbname={database}",
        ]
        for statement in statements:
            command += ["--command", statement]
        return run_command(command, env=_CLIENT_ENV, timeout=30)


class MariaDBServer(_ServerDatabase):
    """A private MariaDB server (the `mysql` answer), data in a temporary directory."""

    kind = "mysql"

    def __init__(self, workdir: str | Path | None = None, *, tls: bool = False) -> None:
        super().__init__(workdir, "mariadb-", tls=tls)
        self._client = "mariadb"

    @property
    def url(self) -> str:
        return f"mysql+pymysql://{APP_USER}:{self.password}@{LOOPBACK}:{self.port}/{APP_DATABASE}"

    @property
    def socket_path(self) -> Path:
        assert self._private is not None, "start() first"
        return self._private / "mysqld.sock"

    def start(self, timeout: float = 60) -> MariaDBServer:
        install_db = require_binary("mariadb-install-db", "mariadb-server")
        mariadbd = require_binary("mariadbd", "mariadb-server")
        self._client = require_binary("mariadb", "mariadb-client")
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        self._private = Path(tempfile.mkdtemp(prefix="mariadb-"))
        data = self._private / "data"
        tmp = self._private / "tmp"
        tmp.mkdir()
        log_dir = self.workdir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            # --no-defaults first: the machine's /etc/mysql configuration must not apply.
            run_command(
                [
                    install_db,
                    "--no-defaults",
                    f"--datadir={data}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    *as_root,
                ],
                env=_CLIENT_ENV,
                cwd=self._private,
                timeout=120,
                log_file=log_dir / "mariadb-install-db.log",
            )
            self._process = SupervisedProcess(
                "mariadb",
                [
                    mariadbd,
                    "--no-defaults",
                    f"--datadir={data}",
                    f"--port={self.port}",
                    f"--socket={self.socket_path}",
                    f"--pid-file={self._private / 'mariadbd.pid'}",
                    f"--tmpdir={tmp}",
                    *as_root,
                    "--skip-networking=0",
                    f"--bind-address={LOOPBACK}",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=64M",
                    "--character-set-server=utf8mb4",
                    "--collation-server=utf8mb4_unicode_ci",
                    *self._mariadb_tls(),
                ],
                env=_CLIENT_ENV,
                cwd=self._private,
                log_dir=log_dir,
                restart=False,
                stop_timeout=30,
            ).start()
            _wait_for(
                self._client_command("SELECT 1", database=None),
                timeout,
                "MariaDB",
                self._process,
            )
            self._admin(
                f"CREATE DATABASE {APP_DATABASE} CHARACTER SET utf8mb4",
                f"CREATE USER '{APP_USER}'@'%' IDENTIFIED BY '{self.password}'",
                f"CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY '{self.password}'",
                f"GRANT ALL PRIVILEGES ON {APP_DATABASE}.* TO '{APP_USER}'@'%'",
                f"GRANT ALL PRIVILEGES ON {APP_DATABASE}.* TO '{APP_USER}'@'localhost'",
                "FLUSH PRIVILEGES",
                database=None,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _mariadb_tls(self) -> list[str]:
        """Server options for TLS; TCP clients without it are refused (the socket is local)."""
        if self.tls is None:
            return []
        cert, key = self._server_certificate(None)
        return [
            f"--ssl-cert={cert}",
            f"--ssl-key={key}",
            f"--ssl-ca={self.tls.ca}",
            "--require-secure-transport=ON",
        ]

    def _client_command(self, sql: str, database: str | None) -> list[str]:
        command = [
            self._client,
            "--no-defaults",
            f"--socket={self.socket_path}",
            "--user=root",
            "--batch",
            "--skip-column-names",
            f"--execute={sql}",
        ]
        return command if database is None else [*command, database]

    def _admin(self, *statements: str, database: str | None = APP_DATABASE) -> str:
        sql = ";\n".join(statements)
        return run_command(self._client_command(sql, database), env=_CLIENT_ENV, timeout=30)


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
