"""The real cookiecutter CLI refuses bad answers with the hook's reason and writes nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from combinations import TEMPLATE_DIR, UNSUPPORTED
from conftest import Result, run


def cookiecutter(output_dir: Path, *answers: str) -> Result:
    """`cookiecutter --no-input TEMPLATE key=value ...` with a private config and replay dir."""
    config = output_dir.parent / "cookiecutter-config.yaml"
    config.write_text(
        f"cookiecutters_dir: {output_dir.parent / 'cookiecutters'}\n"
        f"replay_dir: {output_dir.parent / 'replay'}\n"
    )
    command = [sys.executable, "-m", "cookiecutter", "--no-input"]
    command += ["--config-file", str(config), "-o", str(output_dir), str(TEMPLATE_DIR)]
    return run([*command, *answers], cwd=output_dir.parent, timeout=300)


def refused(output_dir: Path, answers: list[str], reasons: list[str]) -> None:
    result = cookiecutter(output_dir, *answers)
    assert result.returncode != 0, result.explain()
    for reason in reasons:
        assert reason in result.output, f"{reason!r} not in the output: {result.explain()}"
    assert not list(output_dir.iterdir()), f"a refused bake left {list(output_dir.iterdir())}"


TOO_LONG_SLUG = "a" * 54

# (id, answers, fragments the refusal must print)
INVALID_ANSWERS = [
    ("slug-uppercase", ["project_slug=MyService"], ["project_slug='MyService'", "lowercase"]),
    ("slug-space", ["project_slug=my service"], ["project_slug='my service'", "lowercase"]),
    ("slug-leading-digit", ["project_slug=1service"], ["project_slug='1service'", "letter"]),
    ("slug-too-long", [f"project_slug={TOO_LONG_SLUG}"], [f"'{TOO_LONG_SLUG}'", "53"]),
    *(
        (f"package-{name}", [f"package_name={name}"], [f"package_name='{name}'", "shadow"])
        for name in ("celery", "redis", "fastapi", "app", "json")
    ),
    ("package-keyword", ["package_name=class"], ["package_name='class'", "keyword"]),
    ("package-soft-keyword", ["package_name=match"], ["package_name='match'", "keyword"]),
    ("package-leading-digit", ["package_name=1abc"], ["package_name='1abc'", "identifier"]),
    ("package-hyphen", ["package_name=my-pkg"], ["package_name='my-pkg'", "identifier"]),
    ("timezone", ["timezone=Mars/Olympus_Mons"], ["timezone='Mars/Olympus_Mons'", "IANA"]),
    ("email", ["author_email=not-an-email"], ["author_email='not-an-email'", "e-mail"]),
    # cookiecutter itself refuses a value outside a choice list, before the hook runs.
    ("choice-outside-list", ["database=oracle"], ["oracle", "database"]),
    # use_helm is free text (its default follows other answers): the hook checks it.
    ("helm-not-yes-or-no", ["use_helm=maybe"], ["use_helm='maybe'", "yes, no"]),
]


@pytest.mark.parametrize(
    ("answers", "reasons"),
    [pytest.param(answers, reasons, id=case) for case, answers, reasons in INVALID_ANSWERS],
)
def test_invalid_answer_is_refused(output_dir, answers, reasons) -> None:
    refused(output_dir, answers, reasons)


@pytest.mark.parametrize("unsupported", UNSUPPORTED, ids=lambda u: u.label)
def test_unsupported_combination_is_refused(output_dir, unsupported) -> None:
    answers = [f"{key}={value}" for key, value in unsupported.answers.items()]
    refused(output_dir, answers, ["unsupported combination", unsupported.reason])


def test_valid_answers_pass_the_hooks(output_dir) -> None:
    """The control for the refusals above: the same CLI call with good answers bakes."""
    answers = ["project_name=Billing Jobs", "package_name=billing_core", "timezone=Asia/Tokyo"]
    result = cookiecutter(output_dir, *answers)
    assert result.returncode == 0, result.explain()
    assert [p.name for p in output_dir.iterdir()] == ["billing-jobs"]
    assert (output_dir / "billing-jobs" / "src" / "billing_core").is_dir()


@pytest.mark.parametrize("answer", ["database=sqlite", "redis_mode=standalone"])
def test_the_chart_question_follows_the_answers(output_dir, answer) -> None:
    """No chart for a one-machine answer, without a third answer to get past a refusal."""
    result = cookiecutter(output_dir, answer)
    assert result.returncode == 0, result.explain()
    project = next(output_dir.iterdir())
    assert not (project / "deploy" / "helm").exists()
