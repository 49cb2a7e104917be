"""The default bake's benchmark suite runs end to end: `make bench-smoke`.

The smoke starts real Redis + Sentinel, PostgreSQL, workers and the API, so it runs in the
`stack` pass of ci/test.sh. It checks that every scenario ran and wrote its figures, never
a speed. Without the tools it needs the test skips and says what to install; under CI=true
(where ci/provision.sh installs them) it fails instead.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from combinations import SUPPORTED
from conftest import COMMAND_TIMEOUT, combo_params, project_env, run

pytestmark = pytest.mark.stack

SCENARIOS = ("worker", "producer", "api", "scaling", "recovery")
# Tool -> what provides it; PostgreSQL's server binaries live outside PATH on Debian.
TOOLS = {
    "make": "the Debian package make",
    "uv": "uv (ci/test.sh installs it in .venv-ci)",
    "redis-server": "the Debian package redis-server",
    "redis-sentinel": "the Debian package redis-sentinel",
    "wrk": "the Debian package wrk",
}
POSTGRES_INITDB = "/usr/lib/postgresql/*/bin/initdb"


def missing_tools() -> list[str]:
    path = project_env()["PATH"]
    missing = [
        f"{tool} ({source})" for tool, source in TOOLS.items() if not shutil.which(tool, path=path)
    ]
    if not glob.glob(POSTGRES_INITDB):
        missing.append("initdb (the Debian package postgresql)")
    return missing


@pytest.mark.parametrize("combo", combo_params(SUPPORTED[:1]))
def test_make_bench_smoke_writes_every_scenario(bake, combo, tmp_path) -> None:
    missing = missing_tools()
    if missing:
        message = "make bench-smoke needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    baked = bake(combo)
    output = tmp_path / "bench-smoke"
    committed = baked.path / "bench" / "results"
    committed_before = {path.name: path.read_bytes() for path in committed.glob("*")}
    result = run(
        ["make", "bench-smoke", f"BENCH_SMOKE_DIR={output}"],
        cwd=baked.path,
        timeout=COMMAND_TIMEOUT,
    )
    assert result.returncode == 0, result.explain()
    figures = sorted(output.glob("*.json"))
    assert len(figures) == 1, (figures, result.explain())
    document = json.loads(figures[0].read_text())
    assert set(SCENARIOS) <= set(document["scenarios"]), sorted(document["scenarios"])
    for name in SCENARIOS:
        assert document["scenarios"][name], f"scenario {name} wrote nothing"
    assert (output / "report.png").stat().st_size > 0
    assert "bench:results:begin" in (output / "README.md").read_text()
    # The committed results are left alone.
    assert {path.name: path.read_bytes() for path in committed.glob("*")} == committed_before
