"""The lists of supported and unsupported combinations stay true to the questions."""

from __future__ import annotations

import pytest

from combinations import QUESTIONS, SUPPORTED, TEMPLATE_DIR, UNSUPPORTED, choice_questions


def test_every_choice_value_is_in_a_supported_combination() -> None:
    missing = [
        f"{question}={value}"
        for question, values in choice_questions().items()
        for value in values
        if not any(combo.answer(question) == value for combo in SUPPORTED)
    ]
    assert not missing, f"no supported combination answers {', '.join(missing)}"


def test_combinations_answer_only_real_questions_with_real_choices() -> None:
    choices = choice_questions()
    for combo in (*SUPPORTED, *UNSUPPORTED):
        for question, value in combo.answers.items():
            assert question in QUESTIONS, f"{question!r} is not a question of cookiecutter.json"
            if question in choices:
                assert value in choices[question], f"{question}={value!r} is not a choice"


def test_supported_combination_ids_are_unique() -> None:
    ids = [combo.id for combo in SUPPORTED]
    assert len(ids) == len(set(ids)), ids


@pytest.mark.parametrize("unsupported", UNSUPPORTED, ids=lambda u: u.label)
def test_no_supported_combination_is_unsupported(unsupported) -> None:
    clashing = [
        combo.id
        for combo in SUPPORTED
        if all(combo.answer(key) == value for key, value in unsupported.answers.items())
    ]
    assert not clashing, f"{clashing} contain the unsupported {unsupported.label}"


def test_readme_documents_the_combinations_and_the_test_command() -> None:
    readme = (TEMPLATE_DIR / "README.md").read_text()
    for combo in SUPPORTED:
        assert f"`{combo.id}`" in readme, f"README.md does not list combination {combo.id}"
    for unsupported in UNSUPPORTED:
        assert unsupported.label in readme, f"README.md does not list {unsupported.label}"
    for question in QUESTIONS:
        if not question.startswith("_"):
            assert f"`{question}`" in readme, f"README.md does not describe {question}"
    assert "bash ci/test.sh" in readme
    assert "ci/test.sh" in (TEMPLATE_DIR / ".ci" / "run").read_text()
