"""Working directories of the harness: a caller's (kept) or a temporary one (removed)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


class ScratchDir:
    """The given directory (left in place for post-mortems, e.g. pytest's tmp_path), or a
    fresh temporary one removed by cleanup()."""

    def __init__(self, path: str | Path | None, prefix: str) -> None:
        self.owned = path is None
        self.path = Path(tempfile.mkdtemp(prefix=prefix) if path is None else path)
        self.path.mkdir(parents=True, exist_ok=True)

    def cleanup(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
