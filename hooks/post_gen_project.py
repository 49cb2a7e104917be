"""Prune unselected features (from the one manifest) and write .env with fresh secrets."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
from pathlib import Path

MANIFEST = Path("features.json")
ENV_EXAMPLE = Path(".env.example")
ENV_FILE = Path(".env")

# Placeholders in .env.example that must never reach a running stack: each one gets
# its own random value (URL-safe, so it can sit inside a connection URL).
SECRET_PLACEHOLDERS = (
    "change-me-redis-worker-password",
    "change-me-redis-api-password",
    "change-me-redis-beat-password",
    "change-me-redis-flower-password",
    "change-me-redis-exporter-password",
    "change-me-redis-metrics-password",
    "change-me-redis-admin-password",
    "change-me-redis-replica-password",
    "change-me-redis-sentinel-user-password",
    "change-me-sentinel-peer-password",
    "change-me-sentinel-password",
    "change-me-flower-password",
    "change-me-database-password",
    "change-me-grafana-password",
)

# The admin API key (api/keys.py: KEY_PREFIX and 32 random bytes) and its hash.
API_KEY_PREFIX = "tsk_"
API_KEY_DIGEST_PLACEHOLDER = "change-me-api-key-sha256"
API_KEY_PLACEHOLDER = "change-me-api-key"


def prune(manifest: dict[str, dict[str, object]]) -> None:
    """Remove every path of every feature whose answer turned it off."""
    for feature, entry in manifest.items():
        if entry["enabled"]:
            continue
        for raw in entry["paths"]:  # type: ignore[attr-defined]
            path = Path(raw)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                raise SystemExit(f"ERROR: manifest feature {feature!r} lists missing path {raw!r}")
            parent = path.parent
            while parent != Path(".") and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


def write_env() -> None:
    """Copy .env.example to .env, replacing each placeholder with a fresh secret."""
    text = ENV_EXAMPLE.read_text()
    # The admin API key, and the SHA-256 the API compares it with (api/keys.py's digest).
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    text = text.replace(API_KEY_DIGEST_PLACEHOLDER, hashlib.sha256(key.encode()).hexdigest())
    text = text.replace(API_KEY_PLACEHOLDER, key)
    for placeholder in SECRET_PLACEHOLDERS:
        text = text.replace(placeholder, secrets.token_urlsafe(24))
    ENV_FILE.write_text(text)
    ENV_FILE.chmod(0o600)


def main() -> int:
    prune(json.loads(MANIFEST.read_text()))
    MANIFEST.unlink()
    write_env()
    return 0


if __name__ == "__main__":
    sys.exit(main())
