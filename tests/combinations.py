"""The answer combinations the template supports and the ones it refuses.

SUPPORTED is not the full product of the questions: it is a short list in which every
value of every choice question appears at least once (test_combinations checks that
against cookiecutter.json, so the list cannot drift from the questions). README.md shows
the same two lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
QUESTIONS: dict[str, object] = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())


@dataclass(frozen=True)
class Combo:
    """One set of answers (cookiecutter extra_context); the rest are the defaults."""

    id: str
    answers: dict[str, str] = field(default_factory=dict)

    def answer(self, question: str) -> str:
        """The effective answer: the override, else the default (first choice), rendered
        against the answers before it as cookiecutter renders it (use_helm's default
        follows database and redis_mode)."""
        return effective_answers(self.answers)[question]


# Renders answers the way cookiecutter does (plain text, never HTML).
JINJA = Environment(autoescape=False)


def effective_answers(overrides: dict[str, str]) -> dict[str, str]:
    """Every question's answer, in cookiecutter.json's order: override, else the default."""
    answers: dict[str, str] = {}
    for question, default in QUESTIONS.items():
        if question.startswith("_"):
            continue
        if question in overrides:
            answers[question] = overrides[question]
            continue
        raw = str(default[0] if isinstance(default, list) else default)
        answers[question] = JINJA.from_string(raw).render(cookiecutter=answers)
    return answers


SUPPORTED: tuple[Combo, ...] = (
    Combo("default"),
    Combo(
        "mysql-py312-apache-berlin",
        {
            "database": "mysql",
            "python_version": "3.12",
            "license": "Apache-2.0",
            "timezone": "Europe/Berlin",
        },
    ),
    Combo(
        "sqlite-nohelm-py313-bsd",
        {
            "database": "sqlite",
            "python_version": "3.13",
            "license": "BSD-3-Clause",
        },
    ),
    Combo(
        "standalone-nohelm-proprietary-custom-names",
        {
            "redis_mode": "standalone",
            "license": "Proprietary",
            "project_name": "Billing Jobs",
            "package_name": "billing_core",
            "author_name": "Ada Lovelace",
            "author_email": "ada@example.org",
        },
    ),
    Combo(
        "minimal",
        {
            "use_sentry": "no",
            "use_flower": "no",
            "use_celery_exporter": "no",
            "use_helm": "no",
            "ci_provider": "none",
        },
    ),
    Combo("helm-noflower-nosentry", {"use_flower": "no", "use_sentry": "no"}),
    Combo(
        "helm-noexporter-noci-newyork",
        {
            "use_celery_exporter": "no",
            "ci_provider": "none",
            "timezone": "America/New_York",
        },
    ),
)


BY_ID = {combo.id: combo for combo in SUPPORTED}


@dataclass(frozen=True)
class Unsupported:
    """A combination the pre-generation hook refuses, and its reason (cookiecutter.json)."""

    answers: dict[str, str]
    reason: str

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.answers.items())


UNSUPPORTED: tuple[Unsupported, ...] = tuple(
    Unsupported(entry["answers"], entry["reason"]) for entry in QUESTIONS["_unsupported"]
)


@dataclass(frozen=True)
class Feature:
    """An optional part of the generated project (its features.json manifest): the answer
    of `question` that turns it off, and a pattern every mention of it matches."""

    name: str
    question: str
    off: str
    mentions: str


def features() -> tuple[Feature, ...]:
    """The manifest's features (rendered with the default answers: only its paths vary)."""
    raw = (TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "features.json").read_text()
    manifest = json.loads(JINJA.from_string(raw).render(cookiecutter=effective_answers({})))
    return tuple(
        Feature(name, entry["question"], entry["off"], entry["mentions"])
        for name, entry in manifest.items()
    )


def choice_questions() -> dict[str, list[str]]:
    """Every question of cookiecutter.json that offers a fixed list of answers (options that
    are expressions rendered against the default answers)."""
    defaults = effective_answers({})
    return {
        key: [JINJA.from_string(str(v)).render(cookiecutter=defaults) for v in value]
        for key, value in QUESTIONS.items()
        if isinstance(value, list) and not key.startswith("_")
    }
