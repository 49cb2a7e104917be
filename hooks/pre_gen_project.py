"""Reject invalid answers before anything is written, with a one-line reason."""

from __future__ import annotations

import json
import keyword
import re
import sys
import zoneinfo
from typing import Any

# Every answer, as cookiecutter rendered it (choice lists are checked by cookiecutter itself).
ANSWERS: dict[str, Any] = json.loads(r"""{{ cookiecutter | jsonify }}""")

# Questions with free-text answers that must still be one of a few words.
YES_NO = ("use_helm",)

# Imports the generated project makes (or its tooling does): a package with one of
# these names would shadow the real library and break the project at import time.
SHADOWED_IMPORTS = frozenset(
    {
        "alembic", "amqp", "app", "billiard", "celery", "click", "fastapi", "flower",
        "gevent", "greenlet", "gunicorn", "httpx", "kombu", "mypy", "prometheus_client",
        "psycopg", "pydantic", "pydantic_settings", "pymysql", "pytest", "pythonjsonlogger",
        "redis", "ruff", "sentry_sdk", "sqlalchemy", "src", "starlette", "test", "tests",
        "tornado", "uvicorn", "uvicorn_worker", "vine",
    }
)

# Soft keywords of every supported Python (3.11-3.13), whatever Python runs this hook.
SOFT_KEYWORDS = frozenset({"_", "case", "match", "type"})

SLUG_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def problems(answers: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in YES_NO:
        if answers[key] not in ("yes", "no"):
            found.append(f"{key}={answers[key]!r} is not one of yes, no")

    if not answers["project_name"].strip():
        found.append("project_name must not be empty")

    slug = answers["project_slug"]
    if not SLUG_RE.match(slug) or len(slug) > 53:
        found.append(
            f"project_slug={slug!r} must be lowercase letters, digits and single hyphens,"
            " start with a letter and be at most 53 characters (it names containers and"
            " Kubernetes objects)"
        )

    package = answers["package_name"]
    if not (package.isidentifier() and PACKAGE_RE.match(package)):
        found.append(f"package_name={package!r} is not a lowercase Python identifier")
    elif keyword.iskeyword(package) or package in SOFT_KEYWORDS:
        found.append(f"package_name={package!r} is a Python keyword")
    elif package in sys.stdlib_module_names:
        found.append(f"package_name={package!r} would shadow the standard-library module")
    elif package in SHADOWED_IMPORTS:
        found.append(
            f"package_name={package!r} would shadow the {package!r} module the project imports"
        )

    if not EMAIL_RE.match(answers["author_email"]):
        found.append(f"author_email={answers['author_email']!r} is not an e-mail address")

    try:
        zoneinfo.ZoneInfo(answers["timezone"])
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        found.append(f"timezone={answers['timezone']!r} is not an IANA time zone name")

    # Answer combinations the generated project cannot honour (cookiecutter.json).
    for unsupported in answers["_unsupported"]:
        combination = unsupported["answers"]
        if all(answers[key] == value for key, value in combination.items()):
            chosen = ", ".join(f"{key}={value}" for key, value in combination.items())
            found.append(f"unsupported combination {chosen}: {unsupported['reason']}")
    return found


def main() -> int:
    found = problems(ANSWERS)
    for problem in found:
        print(f"ERROR: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
