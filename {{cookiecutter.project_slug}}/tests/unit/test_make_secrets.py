"""deploy/make_secrets.py: a fresh value for each secret the compose file mounts, and
never a new value for one that exists (a rerun must not lock the stack out)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the script reads, without the project's own .env and secrets/."""
    (tmp_path / "deploy").mkdir()
    shutil.copy(PROJECT / "deploy" / "make_secrets.py", tmp_path / "deploy")
    for name in ("docker-compose.yml", ".env.example"):
        shutil.copy(PROJECT / name, tmp_path)
    return tmp_path


def make_secrets(project: Path) -> dict[str, str]:
    script = project / "deploy" / "make_secrets.py"
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    return {path.name: path.read_text() for path in (project / "secrets").iterdir()}


def admin_key_hash(project: Path) -> str:
    line = next(
        line for line in (project / ".env").read_text().splitlines() if line.startswith("API_KEYS=")
    )
    keys = json.loads(line.removeprefix("API_KEYS="))["keys"]
    digest: str = next(key["sha256"] for key in keys if key["name"] == "admin")
    return digest


def test_every_mounted_secret_gets_its_own_fresh_value(project: Path) -> None:
    made = make_secrets(project)
    declared = yaml.safe_load((project / "docker-compose.yml").read_text())["secrets"]
    assert set(made) == set(declared) | {"api_key"}
    assert len(set(made.values())) == len(made), "two secrets share a value"
    assert (project / "secrets").stat().st_mode & 0o777 == 0o700
    assert (project / ".env").stat().st_mode & 0o777 == 0o600
    key = made["api_key"].strip()
    assert admin_key_hash(project) == hashlib.sha256(key.encode()).hexdigest()


def test_a_rerun_keeps_every_secret_and_remakes_only_a_missing_one(project: Path) -> None:
    first = make_secrets(project)
    env = (project / ".env").read_text()
    (project / "secrets" / "redis_user_api_password").unlink()
    second = make_secrets(project)
    assert second["redis_user_api_password"] != first["redis_user_api_password"]
    del first["redis_user_api_password"], second["redis_user_api_password"]
    assert second == first
    assert (project / ".env").read_text() == env
