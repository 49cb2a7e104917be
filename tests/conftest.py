"""Shared fixtures: one bake per supported combination per test session (per xdist worker).

Tests that use the same combination carry the same ``xdist_group`` mark (see
``combo_params``) and ci/test.sh runs ``--dist loadgroup``, so a combination is baked,
and its virtualenv synced, once per run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from combinations import SUPPORTED, TEMPLATE_DIR, Combo

# A baked project's own commands (make lint, make test-unit) may take minutes on a cold
# uv cache; a hung one must still end the run.
COMMAND_TIMEOUT = 1200

# Environment of the test runner that must not leak into a baked project's commands.
LEAKY_PREFIXES = ("PYTEST_", "COV_CORE_")
LEAKY_NAMES = (
    *("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONPATH", "PYTHONHOME"),
    *("MAKEFLAGS", "MFLAGS", "MAKELEVEL"),
)


def combo_params(combos: tuple[Combo, ...] = SUPPORTED) -> list[object]:
    """pytest params with readable ids, grouped so one worker owns each combination."""
    return [
        pytest.param(combo, id=combo.id, marks=pytest.mark.xdist_group(combo.id))
        for combo in combos
    ]


def project_env() -> dict[str, str]:
    """Environment for a baked project's commands: uv on PATH, this machine's Python only."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in LEAKY_NAMES and not key.startswith(LEAKY_PREFIXES)
    }
    # uv cannot download interpreters here: the baked venvs use the machine's Python.
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    env.setdefault("UV_PYTHON", getattr(sys, "_base_executable", sys.executable))
    scripts = sysconfig.get_path("scripts")
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    return env


def run(
    command: list[str],
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Result:
    """Run a command, capturing stdout and stderr together (environment: project_env())."""
    completed = subprocess.run(
        command,
        cwd=cwd,
        env=dict(env) if env is not None else project_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(command=command, returncode=completed.returncode, output=completed.stdout)


@dataclass(frozen=True)
class Result:
    command: list[str]
    returncode: int
    output: str

    def explain(self, last_lines: int = 150) -> str:
        """The command, its exit code and the end of its output, for assertion messages."""
        lines = self.output.splitlines()
        shown = "\n".join(lines[-last_lines:])
        cut = f" (last {last_lines} of {len(lines)} lines)" if len(lines) > last_lines else ""
        return f"`{' '.join(self.command)}` exited {self.returncode}; output{cut}:\n{shown}"


@dataclass(frozen=True)
class Baked:
    """A baked project and the files the bake wrote (before any command ran in it)."""

    combo: Combo
    path: Path
    files: tuple[Path, ...]

    def text_files(self) -> Iterator[tuple[Path, str]]:
        """(relative path, text) of every baked file that is text; binaries are skipped."""
        for relative in self.files:
            data = (self.path / relative).read_bytes()
            if b"\0" in data:
                continue
            try:
                yield relative, data.decode("utf-8")
            except UnicodeDecodeError:
                continue


def describe(error: BaseException | None) -> str:
    """An exception with the template file and line Jinja blames, when it names them."""
    where = ":".join(
        str(part)
        for part in (getattr(error, "filename", None), getattr(error, "lineno", None))
        if part is not None
    )
    return f"{error!r} at {where}" if where else repr(error)


def snapshot(root: Path) -> tuple[Path, ...]:
    return tuple(sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file()))


@pytest.fixture(scope="session")
def bake(cookies_session) -> Callable[[Combo], Baked]:
    """Bake a combination once per session; fail the calling test if the bake failed."""
    cache: dict[str, object] = {}

    def get(combo: Combo) -> Baked:
        if combo.id not in cache:
            result = cookies_session.bake(
                extra_context=dict(combo.answers), template=str(TEMPLATE_DIR)
            )
            if result.exit_code != 0 or result.exception is not None:
                cache[combo.id] = f"exit code {result.exit_code}: {describe(result.exception)}"
            else:
                path = result.project_path
                cache[combo.id] = Baked(combo=combo, path=path, files=snapshot(path))
        baked = cache[combo.id]
        if not isinstance(baked, Baked):
            pytest.fail(f"baking {combo.id} ({combo.answers}) failed: {baked}")
        return baked

    return get


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def require(tool: str) -> str:
    """Path of a tool the tests need; its absence is a failure, never a skip."""
    found = shutil.which(tool, path=project_env()["PATH"])
    if found is None:
        pytest.fail(f"{tool!r} is not on PATH; ci/test.sh installs or expects it")
    return found
