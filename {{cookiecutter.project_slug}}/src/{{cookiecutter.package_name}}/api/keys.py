"""API keys: a JSON document of names, scopes and SHA-256 hashes; the keys themselves are
shown once, when created, and stored nowhere.

    python -m {{ cookiecutter.package_name }}.api.keys create NAME --scope tasks:submit --scope tasks:read
    python -m {{ cookiecutter.package_name }}.api.keys revoke NAME
    python -m {{ cookiecutter.package_name }}.api.keys list

The document lives in API_KEYS_FILE (or --file): the API re-reads it within a second of a
change, so a key is added, rotated (create the new one, move clients, revoke the old one)
or revoked without a restart. Several keys may be valid at once.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

# A key is this prefix and 32 random bytes: the prefix lets secret scanners spot a leak.
KEY_PREFIX = "tsk_"
# The file is checked for changes at most this often (one stat per interval).
RELOAD_SECONDS = 1.0


class Scope(StrEnum):
    TASKS_SUBMIT = "tasks:submit"
    TASKS_READ = "tasks:read"  # the caller's own tasks
    TASKS_CANCEL = "tasks:cancel"  # the caller's own tasks
    TASKS_ADMIN = "tasks:admin"  # read and cancel every caller's tasks
    DEADLETTERS_READ = "deadletters:read"
    DEADLETTERS_REPLAY = "deadletters:replay"


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: frozenset[Scope]
    created_at: datetime | None = None


class KeyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)

    def named(self, name: str) -> KeyEntry | None:
        return next((entry for entry in self.keys if entry.name == name), None)


def digest(key: str) -> str:
    """A key is 256 random bits, so one SHA-256 is as strong as a slow hash, and cheap."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse(text: str, where: str) -> KeyDocument:
    """The document, or a ValueError naming where it came from and what is wrong."""
    try:
        document = KeyDocument.model_validate_json(text or '{"keys": []}')
    except ValidationError as exc:
        raise ValueError(f"{where} is not a valid key document: {exc}") from exc
    names = [entry.name for entry in document.keys]
    if len(names) != len(set(names)):
        raise ValueError(f"{where} names a key twice")
    return document


class KeyStore:
    """Finds the entry of a presented key; follows API_KEYS_FILE as it changes."""

    def __init__(self, inline: str, path: str) -> None:
        self._path = Path(path) if path else None
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[int, int] | None = None
        self._by_digest: dict[str, KeyEntry] = {}
        if self._path is None:
            self._install(parse(inline, "API_KEYS"))
        else:
            self._reload(strict=True)

    @property
    def empty(self) -> bool:
        return not self._by_digest

    def find(self, key: str) -> KeyEntry | None:
        self._reload_if_due()
        presented = digest(key)
        for known, entry in self._by_digest.items():
            if hmac.compare_digest(known, presented):
                return entry
        return None

    def _install(self, document: KeyDocument) -> None:
        self._by_digest = {entry.sha256: entry for entry in document.keys}

    def _reload_if_due(self) -> None:
        if self._path is None or time.monotonic() - self._checked < RELOAD_SECONDS:
            return
        with self._lock:
            if time.monotonic() - self._checked >= RELOAD_SECONDS:
                self._reload(strict=False)

    def _reload(self, *, strict: bool) -> None:
        """Re-read the file if it changed. A broken file at start is an error; later it
        is logged and the keys loaded before stay in force."""
        assert self._path is not None
        self._checked = time.monotonic()
        try:
            status = self._path.stat()
            stamp = (status.st_mtime_ns, status.st_size)
            if stamp == self._stamp:
                return
            document = parse(self._path.read_text(), str(self._path))
        except (OSError, ValueError) as exc:
            if strict:
                raise ValueError(f"API_KEYS_FILE: {exc}") from exc
            logger.error("api keys not reloaded, the old keys stay", extra={"reason": str(exc)})
            return
        self._install(document)
        self._stamp = stamp
        if not strict:
            logger.info("api keys reloaded", extra={"keys": len(document.keys)})


# ---- The command line: create, revoke and list keys in a key file ---------------------


def _read(path: Path) -> KeyDocument:
    return parse(path.read_text(), str(path)) if path.exists() else KeyDocument()


def _write(path: Path, document: KeyDocument) -> None:
    """Atomically (a reader sees the old or the new file), readable by the owner only."""
    text = document.model_dump_json(indent=2, exclude_none=True) + "\n"
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(text)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def new_entry(name: str, scopes: Sequence[Scope]) -> tuple[str, KeyEntry]:
    """A fresh key and its entry; the key is returned once and never stored."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    entry = KeyEntry(
        name=name,
        sha256=digest(key),
        scopes=frozenset(scopes),
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    return key, entry


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--file",
        type=Path,
        default=os.environ.get("API_KEYS_FILE") or None,
        help="the key document (default: $API_KEYS_FILE)",
    )
    action = parser.add_subparsers(dest="action", required=True)
    create = action.add_parser("create", help="add a key; prints it once")
    create.add_argument("name")
    create.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        type=Scope,
        required=True,
        help=f"repeatable; one of {', '.join(scope.value for scope in Scope)}",
    )
    action.add_parser("revoke", help="remove a key").add_argument("name")
    action.add_parser("list", help="names and scopes (never keys)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if options.file is None:
        print("error: give --file or set API_KEYS_FILE", file=sys.stderr)
        return 2
    path: Path = options.file
    try:
        document = _read(path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if options.action == "list":
        for entry in document.keys:
            print(entry.name, " ".join(sorted(entry.scopes)))
        return 0
    if options.action == "create":
        if document.named(options.name):
            print(f"error: a key named {options.name!r} exists; revoke it first", file=sys.stderr)
            return 1
        key, entry = new_entry(options.name, options.scopes)
        document.keys.append(entry)
        _write(path, document)
        print(key)
        return 0
    revoked = document.named(options.name)
    if revoked is None:
        print(f"error: no key named {options.name!r} in {path}", file=sys.stderr)
        return 1
    document.keys.remove(revoked)
    _write(path, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
