"""The template's own shell scripts (ci/, .ci/) pass shellcheck, as the baked projects'
scripts do in their `make lint`."""

from __future__ import annotations

from pathlib import Path

from combinations import TEMPLATE_DIR
from conftest import require, run

SHEBANG_SHELLS = ("sh", "bash")


def is_shell_script(path: Path) -> bool:
    """A *.sh file, or a file whose shebang names sh or bash (.ci/run)."""
    if path.suffix == ".sh":
        return True
    with path.open("rb") as handle:
        first = handle.readline().decode("utf-8", errors="replace").strip()
    if not first.startswith("#!"):
        return False
    words = first[2:].split()
    if words and words[0].endswith("/env"):
        words = words[1:]
    return bool(words) and Path(words[0]).name in SHEBANG_SHELLS


def ci_scripts() -> list[Path]:
    folders = (TEMPLATE_DIR / "ci", TEMPLATE_DIR / ".ci")
    found = (path for folder in folders for path in folder.rglob("*") if path.is_file())
    return sorted(path for path in found if is_shell_script(path))


def test_ci_scripts_pass_shellcheck() -> None:
    scripts = ci_scripts()
    names = {str(path.relative_to(TEMPLATE_DIR)) for path in scripts}
    # The list cannot go stale and pass on nothing: the entry points must be in it.
    assert {".ci/run", "ci/test.sh", "ci/provision.sh"} <= names, sorted(names)
    shellcheck = require("shellcheck")
    result = run(
        [shellcheck, "--external-sources", *(str(path) for path in scripts)], cwd=TEMPLATE_DIR
    )
    assert result.returncode == 0, result.explain()
