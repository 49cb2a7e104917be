"""Make the local secrets of the compose stack, keeping every one that exists already.

- `secrets/<name>`: one file per secret docker-compose.yml declares (`file: ./secrets/<name>`),
  a fresh random value each; compose mounts each into the containers that need it, and
  only those. `secrets/api_key` is the admin API key, which only your shell and the tests
  read.
- `.env` from `.env.example` when there is none, with the admin key's SHA-256 in API_KEYS.

Generation runs it once; run it again after a clone (`make secrets`). To rotate a secret,
delete its file, run this and recreate the stack (README.md, "Secrets"). Standard library
only: it runs before the project's environment exists.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = PROJECT / "docker-compose.yml"
SECRETS_DIR = PROJECT / "secrets"
ENV_EXAMPLE = PROJECT / ".env.example"
ENV_FILE = PROJECT / ".env"
API_KEY_FILE = SECRETS_DIR / "api_key"

# The admin API key (api/keys.py: its prefix and 32 random bytes) and the placeholder of
# its hash in .env.example.
API_KEY_PREFIX = "tsk_"
API_KEY_DIGEST_PLACEHOLDER = "change-me-api-key-sha256"

DECLARED = re.compile(r"^\s+file: \./secrets/([a-z0-9_]+)\s*$", re.MULTILINE)


def declared_secrets() -> list[str]:
    """The secret files docker-compose.yml mounts."""
    return sorted(set(DECLARED.findall(COMPOSE_FILE.read_text())))


def write_new(path: Path, value: str) -> bool:
    """Write a secret that does not exist yet; True if it was made."""
    if path.exists():
        return False
    path.write_text(value + "\n")
    # Readable by the containers' users (not your uid); the directory keeps everyone else
    # on this machine out.
    path.chmod(0o644)
    return True


def main() -> int:
    SECRETS_DIR.mkdir(mode=0o700, exist_ok=True)
    SECRETS_DIR.chmod(0o700)
    made = [
        name
        for name in declared_secrets()
        if write_new(SECRETS_DIR / name, secrets.token_urlsafe(24))
    ]
    new_key = write_new(API_KEY_FILE, API_KEY_PREFIX + secrets.token_urlsafe(32))
    digest = hashlib.sha256(API_KEY_FILE.read_text().strip().encode()).hexdigest()
    if not ENV_FILE.exists():
        ENV_FILE.write_text(ENV_EXAMPLE.read_text().replace(API_KEY_DIGEST_PLACEHOLDER, digest))
        ENV_FILE.chmod(0o600)
        made.append(".env")
    elif new_key and digest not in ENV_FILE.read_text():
        print(
            "secrets/api_key is new and .env does not know it: put its SHA-256 in API_KEYS"
            f" ({digest}), or make a key with python -m {{ cookiecutter.package_name }}.api.keys",
            file=sys.stderr,
        )
    if new_key:
        made.append("api_key")
    print(f"made: {', '.join(made)}" if made else "every secret exists already")
    return 0


if __name__ == "__main__":
    sys.exit(main())
