"""Prune unselected features (from the one manifest) and write .env with fresh secrets."""

from __future__ import annotations

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
    "change-me-redis-password",
    "change-me-sentinel-password",
    "change-me-flower-password",
    "change-me-database-password",
    "change-me-grafana-password",
)


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
