"""Prune unselected features (from the one manifest) and make the stack's secrets."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

# Every answer, as cookiecutter rendered it.
ANSWERS: dict[str, object] = json.loads(r"""{{ cookiecutter | jsonify }}""")
# feature -> the question that turns it off, that answer, and the paths it owns.
MANIFEST = Path("features.json")
# Writes secrets/ and .env (fresh random values); the project keeps it for later clones.
MAKE_SECRETS = Path("deploy/make_secrets.py")


def prune(manifest: dict[str, dict[str, object]]) -> None:
    """Remove every path of every feature whose answer turned it off."""
    for feature, entry in manifest.items():
        if ANSWERS[str(entry["question"])] != entry["off"]:
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


def main() -> int:
    prune(json.loads(MANIFEST.read_text()))
    MANIFEST.unlink()
    runpy.run_path(str(MAKE_SECRETS))["main"]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
