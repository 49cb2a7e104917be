"""Bake every supported combination and check what the bake wrote."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from compose import require_compose

from combinations import BY_ID, SUPPORTED, features
from conftest import COMMAND_TIMEOUT, Baked, Result, combo_params, project_env, require, run

ALL = pytest.mark.parametrize("combo", combo_params())
DEFAULT_ONLY = pytest.mark.parametrize("combo", combo_params(SUPPORTED[:1]))

# --- leftovers -------------------------------------------------------------------------
# `{%`, `%}` and `cookiecutter.<name>` never belong in a generated file. `{{` does in three
# foreign template languages, which are allowed: GitHub Actions expressions (`${{ ... }}`),
# Go templates used by Helm charts (every file under a chart's templates/), and Go
# templates in Prometheus / Alertmanager / docker --format strings, which start with a
# field (`.Name`), a variable (`$labels`), a comment or one of the keywords/functions
# listed below. Any other `{{` is an unrendered Jinja expression.
JINJA_LEFTOVER = re.compile(r"\{%|%\}|cookiecutter\.\w|cookiecutter\[")
GO_TEMPLATE_START = (
    r"[.$]|/\*|(?:if|else|end|range|with|define|template|block|include|printf|len|index"
    r"|humanize\w*|toYaml|toJson|default|required|quote|tpl|reReplaceAll|title|toUpper"
    r"|toLower|safeHtml|and|or|not|eq|ne)\b"
)
FOREIGN_EXPRESSION = re.compile(r"(?<!\$)\{\{(?!-?\s*(?:" + GO_TEMPLATE_START + r"))")
TEMPLATE_SUFFIXES = {".tpl", ".tmpl", ".gotmpl"}


def in_helm_templates(baked: Baked, relative: Path) -> bool:
    """Whether a file is under the templates/ folder of a Helm chart (Go templates)."""
    for parent in relative.parents:
        if (baked.path / parent / "Chart.yaml").is_file():
            rest = relative.relative_to(parent).parts
            return len(rest) > 1 and rest[0] == "templates"
    return False


@ALL
def test_bake_succeeds(bake, combo) -> None:
    baked = bake(combo)
    assert baked.path.is_dir()
    assert (baked.path / "pyproject.toml").is_file()
    if "package_name" in combo.answers:
        assert (baked.path / "src" / combo.answers["package_name"]).is_dir()


@ALL
def test_no_template_leftovers(bake, combo) -> None:
    baked = bake(combo)
    found: list[str] = []
    for relative in baked.files:
        if "{{" in str(relative) or "{%" in str(relative) or "cookiecutter" in str(relative):
            found.append(f"{relative}: unrendered name")
    for relative, text in baked.text_files():
        foreign_ok = relative.suffix in TEMPLATE_SUFFIXES or in_helm_templates(baked, relative)
        for number, line in enumerate(text.splitlines(), start=1):
            if JINJA_LEFTOVER.search(line) or (not foreign_ok and FOREIGN_EXPRESSION.search(line)):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "template leftovers:\n" + "\n".join(found)


@ALL
def test_env_file_and_secret_files_are_fresh_and_ignored(bake, combo, tmp_path) -> None:
    baked = bake(combo)
    env, example = baked.path / ".env", baked.path / ".env.example"
    assert env.is_file(), ".env was not written by the post-generation hook"
    assert example.is_file(), ".env.example is missing"
    assert env.read_text() != example.read_text(), ".env is a plain copy of .env.example"
    assert "change-me" not in env.read_text().lower(), ".env still holds a placeholder"
    assert env.stat().st_mode & 0o077 == 0, f".env is readable by others: {env.stat()}"

    # One file per secret the compose file mounts, and the admin API key, each its own
    # random value; the directory is closed to other users of the machine.
    folder = baked.path / "secrets"
    assert folder.stat().st_mode & 0o077 == 0, f"secrets/ is open to others: {folder.stat()}"
    compose_file = (baked.path / "docker-compose.yml").read_text()
    declared = set(re.findall(r"file: \./secrets/(\w+)", compose_file))
    assert {"redis_user_api_password", "redis_user_worker_password"} <= declared, declared
    made = {path.name: path.read_text().strip() for path in folder.iterdir()}
    assert set(made) == declared | {"api_key"}, sorted(set(made) ^ (declared | {"api_key"}))
    assert all(len(value) >= 32 for value in made.values()), "a secret is short or empty"
    assert len(set(made.values())) == len(made), "two secrets share a value"
    for value in made.values():
        assert value not in env.read_text(), ".env holds a secret"
    digest = hashlib.sha256(made["api_key"].encode()).hexdigest()
    assert digest in env.read_text(), "API_KEYS does not hold the admin key's hash"

    repo = tmp_path / "ignore-check"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    shutil.copy(baked.path / ".gitignore", repo / ".gitignore")

    def ignored(name: str) -> bool:
        check = ["git", "-C", str(repo), "check-ignore", "-q", "--no-index", name]
        return subprocess.run(check, check=False).returncode == 0

    assert ignored(".env"), ".gitignore does not ignore .env"
    assert ignored("secrets/api_key"), ".gitignore does not ignore secrets/"
    assert not ignored(".env.example"), ".gitignore ignores .env.example"


@ALL
def test_features_manifest_is_removed(bake, combo) -> None:
    baked = bake(combo)
    assert not (baked.path / "features.json").exists()
    assert Path("features.json") not in baked.files


# --- pruning ---------------------------------------------------------------------------
# Each feature of the manifest names what mentions it (searched case-insensitively in every
# baked file's path and text). When the feature is kept the pattern must match somewhere,
# so a stale pattern fails instead of passing vacuously. Deliberately not searched: the bare
# word "workflow" (ordinary English in docs) and exporters of other software
# (redis_exporter, postgres-exporter) - only the Celery one and the bare word "exporter".
FEATURES = features()
# database -> the driver package; a bake depends on its own driver only. The ledger code
# and the test harness stay dialect-neutral on purpose ("one code path; the dialect is the
# URL"), so only the places that pin a database are checked: dependencies and defaults.
DRIVERS: dict[str, str | None] = {"postgresql": "psycopg", "mysql": "pymysql", "sqlite": None}
DATABASE_DEFAULT_URL = {"postgresql": "postgresql+psycopg://", "mysql": "mysql+pymysql://"}
PINNING_FILES = ("pyproject.toml", ".env.example")


def mentions(baked: Baked, pattern: str) -> list[str]:
    regex = re.compile(pattern, re.IGNORECASE)
    hits = [f"{relative} (path)" for relative in baked.files if regex.search(str(relative))]
    for relative, text in baked.text_files():
        for number, line in enumerate(text.splitlines(), start=1):
            if regex.search(line):
                hits.append(f"{relative}:{number}: {line.strip()[:160]}")
    return hits


@ALL
def test_unselected_features_are_pruned(bake, combo) -> None:
    baked = bake(combo)
    problems: list[str] = []
    for feature in FEATURES:
        question, off, pattern = feature.question, feature.off, feature.mentions
        hits = mentions(baked, pattern)
        if combo.answer(question) == off and hits:
            problems.append(f"{question}={off} but /{pattern}/ found:\n  " + "\n  ".join(hits))
        elif combo.answer(question) != off and not hits:
            problems.append(f"{question}={combo.answer(question)} but /{pattern}/ found nowhere")
    if combo.answer("ci_provider") == "none" and (baked.path / ".github").exists():
        problems.append("ci_provider=none but .github/ exists")

    chosen = combo.answer("database")
    pinned = "\n".join((baked.path / name).read_text() for name in PINNING_FILES)
    for database, driver in DRIVERS.items():
        if driver is None:
            continue
        if database != chosen and re.search(driver, pinned):
            problems.append(f"database={chosen} but the {driver} driver is pinned")
        elif database == chosen and not re.search(driver, pinned):
            problems.append(f"database={chosen} but its {driver} driver is not pinned")
    expected_url = DATABASE_DEFAULT_URL.get(chosen, "sqlite:///")
    if expected_url not in (baked.path / ".env.example").read_text():
        problems.append(f"database={chosen} but .env.example has no {expected_url} URL")
    assert not problems, "\n".join(problems)


# --- the baked project's own checks -----------------------------------------------------
@ALL
def test_compose_file_is_valid_and_keeps_its_promises(bake, combo) -> None:
    """`docker compose config` accepts every bake's file (all profiles, .env interpolated)
    and the bake's own compose checks pass; the container tier runs two of them for real."""
    baked = bake(combo)
    require_compose()
    config = run(
        ["docker", "compose", "--profile", "monitoring", "config", "--quiet"], cwd=baked.path
    )
    assert config.returncode == 0, config.explain()
    promises = run(["uv", "run", "pytest", "-q", "tests/unit/test_compose_file.py"], cwd=baked.path)
    assert promises.returncode == 0, promises.explain()


@ALL
def test_make_lint_passes(bake, combo) -> None:
    baked = bake(combo)
    require("make")
    require("uv")
    result = run(["make", "lint"], cwd=baked.path)
    assert result.returncode == 0, result.explain()


PYTEST_SUMMARY = re.compile(r"^=*\s*(?P<counts>\d+ (?:passed|failed|errors?).*) in [\d.]+s", re.M)


def assert_passed(result: Result) -> None:
    assert result.returncode == 0, result.explain()
    summaries = PYTEST_SUMMARY.findall(result.output)
    assert summaries, f"no pytest summary line in the output:\n{result.output}"
    counts = summaries[-1]
    assert re.search(r"\b[1-9]\d* passed", counts), f"no test passed: {counts}"
    assert not re.search(r"\d+ (?:failed|errors?)\b", counts), counts


@DEFAULT_ONLY
def test_make_test_unit_passes(bake, combo) -> None:
    baked = bake(combo)
    require("make")
    require("uv")
    assert_passed(run(["make", "test-unit"], cwd=baked.path))


# Every bake with a chart runs the chart's tests (the default bake's unit tier has them).
HELM_COMBOS = tuple(combo for combo in SUPPORTED[1:] if combo.answer("use_helm") == "yes")


@pytest.mark.parametrize("combo", combo_params(HELM_COMBOS))
def test_chart_tests_pass(bake, combo) -> None:
    baked = bake(combo)
    require("uv")
    require("helm")
    chart_tests = sorted(
        str(p.relative_to(baked.path)) for p in baked.path.glob("tests/unit/test_chart_*.py")
    )
    assert len(chart_tests) == 4, chart_tests
    assert_passed(run(["uv", "run", "pytest", *chart_tests], cwd=baked.path))


# --- the baked projects' real-process tiers ----------------------------------------------
# They start Redis, Sentinel, a database server and the project's processes, so they run
# in their own pass of ci/test.sh (`-m stack`, one at a time): two stacks sharing the two
# cores would turn timing bounds into noise.
# One bake per database answer (the ledger is tested on each), plus one with every
# optional feature off (the harness without Flower and Sentry).
INTEGRATION_COMBOS = tuple(
    BY_ID[name]
    for name in ("default", "mysql-py312-apache-berlin", "sqlite-nohelm-py313-bsd", "minimal")
)


# Integration modules that only some of those bakes run; every other module runs on all.
# Each would only repeat itself elsewhere: no database and no optional feature changes
# what it proves, except where a database server is named.
MODULE_COMBOS = {
    # A second Redis, database and stack: one bake per database server with a TLS
    # connection to prove; the others would repeat its Redis half.
    "test_tls.py": ("default", "mysql-py312-apache-berlin"),
    # The API's input handling, down to each database server's limits (offsets, columns).
    "test_api_fuzz.py": ("default", "mysql-py312-apache-berlin"),
    # The broker, Redis and the API's admission gates alone.
    "test_broker_failover.py": ("default",),
    "test_redis_persistence.py": ("default",),
    "test_admission.py": ("default",),
    "test_sentry_delivery.py": ("default",),
}


@pytest.mark.stack
@pytest.mark.parametrize("combo", combo_params(INTEGRATION_COMBOS))
def test_make_test_integration_passes(bake, combo) -> None:
    baked = bake(combo)
    require("make")
    require("uv")
    env = project_env()
    env["PYTEST_ADDOPTS"] = " ".join(
        f"--ignore=tests/integration/{module}"
        for module, combos in MODULE_COMBOS.items()
        if combo.id not in combos
    )
    assert_passed(run(["make", "test-integration"], cwd=baked.path, env=env))


@pytest.mark.stack
@DEFAULT_ONLY
def test_make_test_chaos_passes(bake, combo) -> None:
    baked = bake(combo)
    require("make")
    require("uv")
    assert_passed(run(["make", "test-chaos"], cwd=baked.path, timeout=COMMAND_TIMEOUT * 2))


# Three minutes of mixed faults (`make soak` runs ten by default): 0 lost, 0 duplicated.
CI_SOAK_SECONDS = 180


@pytest.mark.stack
@DEFAULT_ONLY
def test_make_soak_loses_and_duplicates_nothing(bake, combo) -> None:
    baked = bake(combo)
    require("make")
    require("uv")
    assert_passed(run(["make", "soak", f"SOAK_SECONDS={CI_SOAK_SECONDS}"], cwd=baked.path))
    report = json.loads((baked.path / "tests/chaos/results/soak.json").read_text())
    assert report["lost"] == 0, report
    assert report["effects_duplicated"] == 0, report
    assert report["accepted"] > 0, report
